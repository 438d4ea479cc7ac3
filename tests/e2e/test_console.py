"""`labctl console` driven for real: a pty, keystrokes, Ctrl-], the lab prompt, a real guest."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import sys
from pathlib import Path

import pexpect
import pytest

from conftest import ROOT

pytestmark = pytest.mark.e2e

PROMPT = "lab> "
SESSION_END = re.compile(r"session ended: (\S+); artifacts: (\S+)")


def own_qemu(pid: int) -> dict[int, Path]:
    """QEMU processes whose parent is `pid`, with their run directories.  Precise where the
    conftest's global no_leaks is not: other people's guests may run on this host meanwhile."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and argv[0].endswith("qemu-system-x86_64"):
            ram = next(a for a in argv if "mem-path=" in a).split("mem-path=")[1].split(",")[0]
            found[int(entry.name)] = Path(ram).parent
    return found


def assert_cleaned_up(qemu: dict[int, Path]) -> None:
    for pid, run_dir in qemu.items():
        assert not Path(f"/proc/{pid}").exists(), f"QEMU {pid} outlived the session"
        assert not run_dir.exists(), f"{run_dir} outlived the session"


@pytest.fixture
def console(tmp_path):
    """Start `python -m labctl console ...` on a pty, as a person would.  Each child gets
    .qemu (its QEMU and run directory, seen at the hand-over); any child still running after
    the test gets SIGHUP (the terminal closing).  What the ptys showed is in tmp_path/pty.log."""
    children = []

    def start(*args: str) -> pexpect.spawn:
        child = pexpect.spawn(sys.executable, ["-m", "labctl", "console", *args], cwd=str(ROOT),
                              encoding="utf-8", codec_errors="replace", timeout=120,
                              dimensions=(50, 200))
        child.logfile_read = (tmp_path / "pty.log").open("a")
        children.append(child)
        child.expect("on the guest console")
        child.qemu = own_qemu(child.pid)
        assert len(child.qemu) == 1
        return child

    yield start
    for child in children:
        child.close(force=True)
        assert_cleaned_up(child.qemu)


def lab(child: pexpect.spawn, line: str, expect: str | re.Pattern = PROMPT) -> str:
    """Type one prompt line; return what it printed up to `expect` and wait for the prompt."""
    child.sendline(line)
    child.expect(expect)
    printed = child.before
    if expect != PROMPT:
        child.expect(PROMPT)
    return printed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ended(child: pexpect.spawn) -> tuple[str, dict, Path]:
    child.expect(SESSION_END)
    outcome, directory = child.match[1], Path(child.match[2])
    child.expect(pexpect.EOF)
    child.close()
    return outcome, json.loads((directory / "result.json").read_text()), directory


def test_corrupt_panic_and_verdict_from_the_lab_prompt(console):
    child = console("crash-corrupt", "--kernel", "debian-6.12", "--stop-at", "loaded")
    child.sendline("echo typed-$((6*7))")       # the person's keystrokes reach the guest shell
    child.expect("typed-42")
    child.send("\x1d")                          # Ctrl-]
    child.expect(PROMPT)
    segments = lab(child, "segments", "entry")
    assert re.search(r" 3 kernel +0x[0-9a-f]+", segments) and "purgatory" in segments
    assert "unknown command 'corupt'" in lab(child, "corupt kernel")   # a typo keeps the guest
    assert "start the session with --gdb" in lab(child, "gdb")
    child.sendline("corrupt kernel")
    child.expect(r"corrupted 16 bytes of kernel at 0x[0-9a-f]+ \(\+0x[0-9a-f]+\): "
                 r"before ([0-9a-f]{32}) after ([0-9a-f]{32})")
    before, after = child.match[1], child.match[2]
    assert before != after
    child.expect(PROMPT)
    lab(child, "panic", "panic sent")
    child.sendline("verdict")                   # typed at once: it waits for the evidence
    child.expect(r"verdict: purgatory-refused")
    assert "no verdict yet" not in child.before
    child.expect(PROMPT)
    child.sendline("quit")
    outcome, result, directory = ended(child)
    assert child.exitstatus == 0
    assert_cleaned_up(child.qemu)
    assert (outcome, result["outcome"], result["passed"], result["mode"]) == (
        "purgatory-refused", "purgatory-refused", True, "console")
    assert result["evidence"]["corruptions"][0]["after"] == after
    parked = result["evidence"]["verdict"]["parked"]
    assert parked["segment"]["role"] == "purgatory" and parked["code"].startswith("ebfe")
    assert re.search(r"^\[\s*[\d.]+\] typed-42$", (directory / "serial.log").read_text(), re.MULTILINE)
    assert "lab> corrupt kernel" in (directory / "lab.log").read_text()


def test_continue_runs_the_rest_and_ctrl_c_at_the_prompt_cleans_up(console):
    port = free_port()
    child = console("crash-intact", "--kernel", "debian-6.12", "--stop-at", "booted", "--gdb", str(port))
    assert f"'target remote 127.0.0.1:{port}'" in child.before   # printed before the hand-over
    child.send("\x1d")
    child.expect(PROMPT)
    assert "nothing loaded yet" in lab(child, "segments")
    assert f"target remote 127.0.0.1:{port}" in lab(child, "gdb")
    assert "peek: LEN must be between 1 and 4096" in lab(child, "peek 0x1000 999999")
    child.sendline("continue")
    child.expect(r"verdict: capture-booted \(scenario expects capture-booted: PASS")
    child.expect("on the guest console")
    child.sendline("echo capture-$((6*7)) $(cat /proc/cmdline)")   # the capture kernel's shell
    child.expect(r"capture-42 .*elfcorehdr=")
    child.send("\x1d")
    child.expect(PROMPT)
    child.sendintr()                             # Ctrl-C at the lab prompt ends the session
    child.expect(r"interrupted: session ended at stage panicked; artifacts in (\S+)")
    result = json.loads((Path(child.match[1]) / "result.json").read_text())
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    assert_cleaned_up(child.qemu)
    assert (result["outcome"], result["passed"], result["ended_by"]) == ("capture-booted", True, "interrupt")
    assert result["evidence"]["verdict"]["vmcore"]["ok"]


def test_terminal_closing_on_the_console_ends_qemu(console):
    child = console("crash-intact", "--kernel", "debian-6.12", "--stop-at", "booted")
    child.kill(signal.SIGHUP)                    # what a closing terminal window sends
    child.expect(pexpect.EOF)
    child.wait()
    assert child.exitstatus == 130               # handled, not killed
    assert_cleaned_up(child.qemu)


def test_gdb_line_stops_real_gdb_at_purgatory_entry_on_6_1(console, tmp_path):
    """6.1 does not log purgatory's entry: the lab computes it from the kernel's purgatory
    object in RAM.  Real gdb, run with the printed command line, must stop exactly there,
    with purgatory's symbols loaded."""
    port = free_port()
    child = console("crash-corrupt", "--kernel", "debian-6.1", "--stop-at", "loaded", "--gdb", str(port))
    hint = re.search(r"stops at purgatory's entry (0x[0-9a-f]+) \(purgatory_start\) after the panic\):"
                     r"\r\n  (gdb [^\r\n]+)", child.before)
    assert hint, child.before
    entry, argv = int(hint[1], 16), shlex.split(hint[2])
    assert argv[-2:] == ["-ex", "continue"] and any(a.startswith("add-symbol-file /") for a in argv)
    gdb = pexpect.spawn(argv[0], argv[1:], encoding="utf-8", timeout=60,
                        env={**os.environ, "TERM": "dumb"})  # dumb: no colours in the output
    gdb.logfile_read = (tmp_path / "pty.log").open("a")
    gdb.expect("Continuing.")                   # attached, breakpoint set, guest running again
    child.send("\x1d")
    child.expect(PROMPT)
    lab(child, "corrupt kernel", "corrupted 16 bytes")
    lab(child, "panic", "panic sent")
    gdb.expect(r"Breakpoint 1, (0x[0-9a-f]+) in purgatory_start \(\)")
    assert int(gdb.match[1], 16) == entry
    child.sendline("verdict")                   # gdb holds the vCPU: no evidence can come
    child.expect(r"waiting for evidence: [\d.]+ s since the panic \(verdict timeout \d+ s\); CPU#0 "
                 r"RIP=0x[0-9a-f]+ in purgatory; Ctrl-C: back to the prompt")
    child.sendintr()                            # Ctrl-C ends the wait, not the session
    child.expect(r"no verdict yet \([\d.]+ s since the panic, no evidence yet; stage panicked\)")
    child.expect(PROMPT)
    gdb.expect(r"\(gdb\) ")
    gdb.sendline("info symbol $pc")
    gdb.expect(r"purgatory_start in section \.text")
    gdb.sendline("detach")                      # the guest runs on into purgatory's check
    gdb.expect("Detaching")
    gdb.sendline("quit")
    gdb.expect(pexpect.EOF)
    child.sendline("verdict")
    child.expect(r"verdict: purgatory-refused")
    child.expect(PROMPT)
    child.sendline("quit")
    outcome, result, directory = ended(child)
    assert outcome == "purgatory-refused" and (directory / "purgatory.ro").stat().st_size > 0
