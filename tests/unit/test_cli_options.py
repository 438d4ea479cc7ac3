"""Every subcommand that reads the lab accepts --lab, --accel and --artifacts (options.py)."""

from pathlib import Path

import pytest

from labctl.cli import build_parser
from labctl.options import lab_from_args

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
