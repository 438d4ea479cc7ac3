"""Security properties of the lab itself: private run directories, no shell, local listeners.

The live checks (a real QEMU's run directory, RAM file and listening sockets)
are in tests/e2e/test_faults.py; these pin the parts that are pure.
"""

from __future__ import annotations

import ast
import os
import stat
import subprocess
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from labctl.artifacts import safe_component
from labctl.guest.machine import OWNER_FILE, Machine, MachineSpec, RunDir, qemu_argv, sweep_stale_run_dirs

ROOT = Path(__file__).resolve().parents[2]
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output", "spawn"}
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"),
               ("subprocess", "getstatusoutput"), ("pexpect", "run")}


def python_sources() -> list[Path]:
    return sorted([*ROOT.glob("labctl/**/*.py"), *ROOT.glob("bench/*.py")])


def _dotted(node: ast.AST) -> tuple[str, ...]:
    if isinstance(node, ast.Attribute):
        return (*_dotted(node.value), node.attr)
    return (node.id,) if isinstance(node, ast.Name) else ()


def shell_uses(path: Path) -> list[str]:
    """Calls in one file that hand a command to a shell, or a command as one string."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        where = f"{path.name}:{node.lineno}"
        if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
               for k in node.keywords):
            found.append(f"{where}: shell= argument")
        if name[-2:] in SHELL_CALLS:
            found.append(f"{where}: {'.'.join(name)}")
        if name[-1:] and name[-1] in SUBPROCESS_CALLS and name[0] in ("subprocess", "pexpect") \
                and node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
            found.append(f"{where}: command given as a string")
    return found


def test_the_scan_finds_shell_strings(tmp_path):
    """The scanner must be able to convict, or its silence below means nothing."""
    bad = tmp_path / "probe.py"
    bad.write_text("import os, subprocess\nsubprocess.run('ls -l', shell=True)\n"
                   "os.system('reboot')\nsubprocess.Popen(f'qemu {x}')\n"
                   "subprocess.run(['ls', '-l'], shell=False)\n")
    assert [use.split(": ", 1)[1] for use in shell_uses(bad)] == [
        "shell= argument", "command given as a string", "os.system", "command given as a string"]


def test_no_subprocess_with_a_shell_string():
    sources = python_sources()
    assert len(sources) > 20  # the scan saw the package, not an empty glob
    assert [use for path in sources for use in shell_uses(path)] == []


def test_run_directory_is_private_and_removed():
    rundir = RunDir()
    try:
        assert stat.S_IMODE(rundir.path.stat().st_mode) == 0o700
        assert rundir.path.stat().st_uid == os.getuid()
    finally:
        rundir.close()
    assert not rundir.path.exists()


def test_ram_file_is_owner_only_even_with_a_permissive_umask(tmp_path):
    machine = Machine(MachineSpec(kernel=tmp_path / "k", initrd=tmp_path / "i", cmdline="",
                                  memory_mib=4), tmp_path / "qemu.log")
    machine.rundir = RunDir()
    old = os.umask(0)
    try:
        ram = machine._make_ram_file()
        assert stat.S_IMODE(ram.stat().st_mode) == 0o600 and ram.stat().st_size == 4 << 20
    finally:
        os.umask(old)
        machine.shutdown()
    assert not ram.exists()


def test_qemu_listens_only_on_unix_sockets_and_gdb_on_loopback(tmp_path):
    spec = MachineSpec(kernel=tmp_path / "k", initrd=tmp_path / "i", cmdline="", gdb_port=1234)
    argv = qemu_argv(spec, tmp_path / "ram", tmp_path / "c.sock", tmp_path / "k.sock", tmp_path / "q.sock")
    chardevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-chardev"]
    assert len(chardevs) == 3 and all(c.startswith("socket,") and ",path=" in c for c in chardevs)
    assert not any("host=" in c or "port=" in c or "server" in c for c in chardevs)
    assert argv[argv.index("-gdb") + 1] == "tcp:127.0.0.1:1234"
    assert not {"-vnc", "-spice", "-monitor", "-qmp", "-netdev", "-net"} & set(argv)
    assert "-nodefaults" in argv and argv[argv.index("-display") + 1] == "none"


def test_no_gdbstub_unless_asked(tmp_path):
    spec = MachineSpec(kernel=tmp_path / "k", initrd=tmp_path / "i", cmdline="")
    argv = qemu_argv(spec, tmp_path / "ram", tmp_path / "c", tmp_path / "k", tmp_path / "q")
    assert "-gdb" not in argv and not any("tcp:" in a for a in argv)


@given(st.text(min_size=0, max_size=40))
def test_names_become_one_safe_path_component(name):
    part = safe_component(name)
    assert part and "/" not in part and "\0" not in part
    assert not part.startswith(".") and part not in ("..", ".")


def test_only_run_dirs_of_a_dead_labctl_are_swept(tmp_path):
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead, alive, unowned = (tmp_path / f"kexec-lab-{n}" for n in ("dead0000", "alive000", "unowned0"))
    for directory, owner in ((dead, finished.pid), (alive, os.getpid()), (unowned, None)):
        directory.mkdir()
        (directory / "guest-ram").write_bytes(b"\0" * 16)
        if owner is not None:
            (directory / OWNER_FILE).write_text(str(owner))
    assert sweep_stale_run_dirs(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and unowned.exists()
