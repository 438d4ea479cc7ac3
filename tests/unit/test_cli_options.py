"""Every subcommand that reads the lab accepts --lab, --accel and --artifacts (options.py)."""

import importlib.metadata
from pathlib import Path

import pytest

from labctl.cli import build_parser, main
from labctl.config.options import lab_from_args

REPO = Path(__file__).resolve().parents[2]
COMMANDS = [["run", "crash-corrupt"], ["console", "crash-corrupt"], ["matrix"], ["coverage"],
            ["scenarios"], ["kernel", "list"], ["kernel", "fetch"], ["kernel", "build", "x"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_common_options_reach_the_lab(command, tmp_path):
    args = build_parser().parse_args(command + ["--lab", str(REPO / "lab.yaml"), "--accel", "tcg",
                                                "--artifacts", str(tmp_path / "out")])
    lab = lab_from_args(args)
    assert (lab.path, lab.accel, lab.artifacts_dir) == (REPO / "lab.yaml", "tcg", tmp_path / "out")
    assert lab.scenarios_dir == REPO / "scenarios"


def test_lab_before_the_subcommand_is_kept():
    """`labctl --lab X run ...` (how matrix starts its children) is not undone by the
    subcommand's own --lab."""
    args = build_parser().parse_args(["--lab", "/elsewhere/lab.yaml", "run", "crash-intact"])
    assert args.lab == Path("/elsewhere/lab.yaml") and args.accel is None


def test_help_says_what_the_tool_is_and_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "kexec-lab: prove on real QEMU guests whether kexec/kdump does what it promises" in out
    assert "exit codes: 0 all passed, 1 an expectation failed" in out
    assert "Parses arguments" not in out  # the module docstring is for developers


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"labctl (kexec-lab) {importlib.metadata.version('labctl')}"


def test_a_fresh_clone_has_artifacts_with_its_readme():
    """The design names artifacts/ as a top-level directory; .gitignore keeps only its README."""
    assert (REPO / "artifacts" / "README.md").is_file()
    ignore = (REPO / ".gitignore").read_text().splitlines()
    assert "artifacts/*" in ignore and "!artifacts/README.md" in ignore


@pytest.mark.parametrize("spelling", [["--kernel", "a", "--kernel", "b"], ["--kernels", "a", "b"],
                                      ["--kernel", "a", "b"]], ids=" ".join)
@pytest.mark.parametrize(("command", "dest"), [(["matrix"], "kernels"), (["coverage"], "kernel")])
def test_one_kernel_flag_for_several_kernels(command, dest, spelling):
    """--kernel is the documented spelling everywhere; --kernels (matrix's old one) still works."""
    assert getattr(build_parser().parse_args(command + spelling), dest) == ["a", "b"]


@pytest.mark.parametrize("command", [["matrix"], ["coverage"], ["fuzz"], ["kernel", "build", "x"]], ids=" ".join)
def test_jobs_is_a_positive_count_everywhere(command, capsys):
    assert build_parser().parse_args(command + ["-j", "2"]).jobs == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(command + ["--jobs", "0"])
    assert "must be 1 or more" in capsys.readouterr().err
