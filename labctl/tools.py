"""External programs (apt, dpkg, patch, gcc, tar, decompressors...): one way to run them.

Every call has a timeout.  A program that is missing, hangs or fails is the
host's problem, not the kernel's: an InfraError (exit 3) that names what the lab
was doing, the command, and the tail of what the program said.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from labctl.errors import InfraError

OUTPUT_TAIL = 800  # characters of stderr (or stdout) quoted in an error


class ToolError(InfraError):
    """An external program failed; `proc` is its result when it ran to the end."""

    def __init__(self, message: str, proc: subprocess.CompletedProcess | None = None):
        super().__init__(message)
        self.proc = proc


def output_tail(proc: subprocess.CompletedProcess) -> str:
    """The last words of a finished program: stderr, or stdout if it said nothing there."""
    said = proc.stderr or proc.stdout or ""
    if isinstance(said, bytes):
        said = said.decode(errors="replace")
    return said.strip()[-OUTPUT_TAIL:]


def run_tool(argv: list[str], what: str, timeout: float, *, cwd: Path | None = None,
             input: Any = None, text: bool = True, check: bool = True) -> subprocess.CompletedProcess:
    """Run `argv` (never a shell) for `what` ("unpacking linux-source-6.12"), capturing its
    output.  check=False returns a failed run for callers that word their own message."""
    command = " ".join(argv)
    try:
        proc = subprocess.run(argv, cwd=cwd, input=input, capture_output=True, text=text,
                              timeout=timeout)
    except FileNotFoundError:
        raise ToolError(f"{what}: {argv[0]} not found (see the Makefile's APT_PACKAGES)") from None
    except subprocess.TimeoutExpired:
        raise ToolError(f"{what}: '{command}' did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise ToolError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from None
    if check and proc.returncode != 0:
        raise ToolError(f"{what} failed: '{command}' exited {proc.returncode}: {output_tail(proc)}",
                        proc)
    return proc
