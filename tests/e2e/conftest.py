"""Helpers for end-to-end tests: run the real `labctl` and read what it left behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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
        if cmd and cmd[0].endswith(b"qemu-system-x86_64") and any(b"kexec-lab-" in a for a in cmd):
            found.append(b" ".join(cmd).decode(errors="replace"))
    return found


def leftover_run_dirs() -> list[str]:
    return [str(p) for base in (Path("/dev/shm"), Path("/tmp")) for p in base.glob("kexec-lab-*")]


@pytest.fixture
def no_leaks():
    """Asserts that the test left no QEMU process and no run directory behind."""
    before = set(leftover_run_dirs())
    yield
    assert qemu_processes() == []
    assert set(leftover_run_dirs()) - before == set()
