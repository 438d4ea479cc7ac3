"""How the lab words the end of QEMU, and where a late scenario error points.

These messages are what a person reads in result.json after a fault; a reset
(exit 0 under -no-reboot) must read differently from QEMU killed from outside.
"""

from __future__ import annotations

import signal
import subprocess

import pytest

from labctl.config.schema import key_error
from labctl.guest.machine import Machine, MachineSpec


@pytest.fixture
def machine(tmp_path):
    spec = MachineSpec(kernel=tmp_path / "k", initrd=tmp_path / "i", cmdline="")
    (tmp_path / "qemu.log").write_text("qemu-system-x86_64: some warning\nqemu: the last words\n")
    return Machine(spec, tmp_path / "qemu.log")


@pytest.mark.parametrize("argv,how", [
    (["sh", "-c", "exit 0"], "QEMU exited with status 0 (the guest reset or powered off)"),
    (["sh", "-c", "exit 1"], "QEMU exited with status 1"),
    (["sh", "-c", "kill -KILL $$"], "QEMU was killed by SIGKILL"),
])
def test_death_reason_names_how_qemu_ended_and_its_last_words(machine, argv, how):
    machine.proc = subprocess.Popen(argv)
    assert machine.exited_within(5)
    assert machine.death_reason() == f"{how}: qemu: the last words"


def test_a_running_qemu_has_not_exited(machine):
    machine.proc = subprocess.Popen(["sleep", "30"])
    try:
        assert not machine.exited_within(0.1)
        assert machine.death_reason().startswith("QEMU is still running")
    finally:
        machine.proc.send_signal(signal.SIGKILL)
        machine.proc.wait()


def test_key_error_points_at_the_key_in_the_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("expect: purgatory-refused\ncorrupt:\n  segment: kernel\n  offset: 0x10000000\n")
    error = key_error(path, ("corrupt", "offset"), "past the segment")
    assert str(error) == f"{path}:4: key 'corrupt.offset': past the segment"
    assert error.exit_code == 2
    missing = key_error(tmp_path / "gone.yaml", ("kernels", "k", "path"), "not found")
    assert str(missing) == f"{tmp_path / 'gone.yaml'}: key 'kernels.k.path': not found"
