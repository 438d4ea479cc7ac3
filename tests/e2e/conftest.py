"""Helpers for end-to-end tests: run the real `labctl` and read what it left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACT_LINE = re.compile(r"^  artifacts: (.+)$", re.MULTILINE)


@dataclass
class LabRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def results(self) -> dict[str, dict]:
        """scenario name -> result.json of each pair this run wrote."""
        out = {}
        for directory in ARTIFACT_LINE.findall(self.stdout):
            result = json.loads((Path(directory) / "result.json").read_text())
            result["_dir"] = Path(directory)
            out[result["scenario"]["name"]] = result
        return out


def shared_cache() -> Path:
    """The cache lab.yaml uses ($XDG_CACHE_HOME/kexec-lab unless it names one): where
    `make setup` put the kernels and `make recipes` the recipe builds."""
    from labctl.config.schema import load_lab
    return load_lab(ROOT / "lab.yaml").cache_dir


def labctl(*args: str, timeout: float = 600, env: dict | None = None) -> LabRun:
    """Run the CLI as a user would (python -m labctl), from the repository root."""
    proc = subprocess.run([sys.executable, "-m", "labctl", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    return LabRun(proc.returncode, proc.stdout, proc.stderr)


def qemu_processes() -> list[str]:
    """Command lines of running QEMU processes started for the lab."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and b"qemu-system-" in cmd[0].rsplit(b"/", 1)[-1] and any(b"kexec-lab-" in a for a in cmd):
            found.append(b" ".join(cmd).decode(errors="replace"))
    return found


def leftover_run_dirs() -> list[str]:
    return [str(p) for base in (Path("/dev/shm"), Path("/tmp")) for p in base.glob("kexec-lab-*")]


MARK = "KEXEC_LAB_TEST_MARK"
RUN_DIR = re.compile(r"/kexec-lab-[a-z0-9_]{8}$")  # RunDir's mkdtemp names, not a bench's temp dir


def marked_processes(mark: str) -> list[int]:
    """Running processes (labctl, QEMU) that inherited a test's mark in their environment."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ and int(pid) != os.getpid() and state != "Z":
            found.append(int(pid))
    return found


def unused_run_dirs(candidates: set[str], mark: str) -> set[str]:
    """Run directories that no running QEMU uses, except another user's run that is just
    starting (its owner, alive and not started by this test, has not launched QEMU yet)."""
    return {d for d in candidates if RUN_DIR.search(d) and os.path.exists(d)
            and not any(f"mem-path={d}/" in cmd for cmd in qemu_processes())
            and not _someone_elses(d, mark)}


def _someone_elses(run_dir: str, mark: str) -> bool:
    try:
        owner = int((Path(run_dir) / "owner").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return os.path.exists(f"/proc/{owner}") and owner not in marked_processes(mark)


@pytest.fixture
def no_leaks(monkeypatch):
    """Asserts that the test left no QEMU process and no run directory behind.

    Other people's guests may run on this host meanwhile, so only what this test
    started counts: every process it starts inherits a mark in its environment.
    Leftovers of its own are killed after the check, not left to the next test."""
    mark = os.urandom(6).hex()
    monkeypatch.setenv(MARK, mark)
    before = set(leftover_run_dirs())
    yield
    deadline = time.monotonic() + 5
    while (marked_processes(mark) or unused_run_dirs(set(leftover_run_dirs()) - before, mark)) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    left = marked_processes(mark)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []
    assert unused_run_dirs(set(leftover_run_dirs()) - before, mark) == set()


def assert_dump_verified(result: dict) -> None:
    """A healthy capture: the dump's ranges are the crashed kernel's RAM, every sampled page
    matched the RAM file, and its log holds the panic the console showed."""
    dump = result["evidence"]["verdict"]["dump"]
    assert dump["ok"] and dump["problems"] == [], dump["problems"]
    assert dump["ranges"]["dumped"] == dump["ranges"]["expected"] != []
    pages = dump["pages"]["pages"]
    assert len(pages) >= 3 * len(dump["ranges"]["loads"]) and isinstance(dump["pages"]["seed"], int)
    assert all(p["dump"] == p["ram_file"] for p in pages)
    assert {p["pt_load"] for p in pages} == {load["index"] for load in dump["ranges"]["loads"]}
    log = dump["log"]
    assert any(line.startswith("Kernel panic - not syncing") for line in log["console_lines"])
    assert log["found"] == log["console_lines"]
    assert "Kernel panic - not syncing" in (result["_dir"] / "dump-dmesg.txt").read_text()
    assert 0 < result["timings"]["dump_check"] < result["timings"]["panic_to_verdict"]
