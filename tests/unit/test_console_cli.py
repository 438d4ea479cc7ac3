"""`labctl console` arguments: mistakes are usage errors found before any guest starts."""

from pathlib import Path

import pytest

from labctl.cli import build_parser, main
from labctl.console.session import DEFAULT_GDB_PORT


def test_defaults_stop_after_the_load_without_gdb():
    args = build_parser().parse_args(["console", "crash-corrupt"])
    assert (args.stop_at, args.gdb, args.kernel) == ("loaded", None, None)


def test_gdb_without_a_port_takes_the_default_and_a_port_is_checked(capsys):
    args = build_parser().parse_args(["console", "crash-corrupt", "--gdb"])
    assert args.gdb == DEFAULT_GDB_PORT
    assert build_parser().parse_args(["console", "crash-corrupt", "--gdb", "4321"]).gdb == 4321
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["console", "crash-corrupt", "--gdb", "70000"])
    assert exit_.value.code == 2 and "port must be 1..65535, got 70000" in capsys.readouterr().err


def test_stopping_at_a_corruption_the_scenario_does_not_have_is_a_usage_error(capsys):
    assert main(["console", "crash-intact", "--stop-at", "corrupted"]) == 2
    err = capsys.readouterr().err
    assert "--stop-at corrupted: scenario crash-intact has no corrupt step" in err
    assert "booting" not in err  # refused before any guest


def test_an_unknown_scenario_names_the_known_ones(capsys):
    assert main(["console", "crash-corupt"]) == 2
    assert "unknown scenario 'crash-corupt'; known:" in capsys.readouterr().err


def test_a_scenario_that_cannot_apply_is_refused_before_any_guest(tmp_path, capsys):
    """The kernel's config file says no SMP: no console session on a guest that cannot run it."""
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "bzImage").write_bytes(b"\0" * 4096)  # never booted
    (tmp_path / "k" / "config").write_text("# CONFIG_SMP is not set\nCONFIG_KEXEC_FILE=y\n")
    (tmp_path / "lab.yaml").write_text("default_kernel: k\nkernels:\n  k: {path: k/bzImage}\n")
    scenario = str(Path(__file__).resolve().parents[2] / "scenarios" / "crash-intact-cpu1.yaml")
    assert main(["--lab", str(tmp_path / "lab.yaml"), "console", scenario, "--artifacts", str(tmp_path / "a")]) == 2
    assert ("crash-intact-cpu1 does not apply to k: machine.smp: needs 2 CPUs (CONFIG_SMP=y), but CONFIG_SMP "
            f"is not set (config file {tmp_path / 'k' / 'config'})") in capsys.readouterr().err
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").rglob("result.json"))
