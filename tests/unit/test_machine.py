"""The QEMU command line, pinned as a golden list, and the run directory's privacy."""

import os
import stat
from pathlib import Path

from labctl.guest.machine import MachineSpec, RunDir, qemu_argv

SPEC = MachineSpec(kernel=Path("/k/bzImage"), initrd=Path("/k/initrd"), cmdline="console=ttyS0",
                   accel="tcg", memory_mib=1024)
SOCKS = (Path("/run/x/ram"), Path("/run/x/console.sock"), Path("/run/x/control.sock"),
         Path("/run/x/qmp.sock"))

GOLDEN_TCG = [
    "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max",
    "-machine", "pc,memory-backend=ram",
    "-object", "memory-backend-file,id=ram,size=1024M,mem-path=/run/x/ram,share=on",
    "-m", "1024M", "-smp", "1",
    "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    "-kernel", "/k/bzImage", "-initrd", "/k/initrd", "-append", "console=ttyS0",
    "-chardev", "socket,id=console,path=/run/x/console.sock", "-serial", "chardev:console",
    "-chardev", "socket,id=control,path=/run/x/control.sock", "-serial", "chardev:control",
    "-chardev", "socket,id=qmp,path=/run/x/qmp.sock", "-mon", "chardev=qmp,mode=control",
]


def test_tcg_command_line_is_pinned():
    assert qemu_argv(SPEC, *SOCKS) == GOLDEN_TCG


def test_kvm_and_gdb_variants():
    spec = MachineSpec(**{**SPEC.__dict__, "accel": "kvm", "gdb_port": 1234})
    argv = qemu_argv(spec, *SOCKS)
    assert argv[1:5] == ["-accel", "kvm", "-cpu", "host"]
    assert argv[-2:] == ["-gdb", "tcp:127.0.0.1:1234"]  # never on all interfaces


def test_run_directory_is_private_and_removed():
    rundir = RunDir()
    try:
        assert stat.S_IMODE(os.stat(rundir.path).st_mode) == 0o700
    finally:
        rundir.close()
    assert not rundir.path.exists()
