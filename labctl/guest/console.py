"""The kernel console (ttyS0): read through pexpect, logged with host timestamps.

Guest output is untrusted: it is decoded with replacement, logged line by line
with the host time since the run started, and only ever matched against
patterns; the in-memory buffer is bounded.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pexpect
import pexpect.fdpexpect

SEARCH_WINDOW = 8192
ANY_OUTPUT = re.compile(r".+", re.DOTALL)
BUFFER_LIMIT = 64 * 1024


class StampedLog:
    """A file-like sink that prefixes each complete line with seconds since t0."""

    def __init__(self, path: Path, t0: float):
        self._file = open(path, "a", encoding="utf-8", errors="replace")
        self._t0 = t0
        self._partial = ""
        self.received = 0  # characters the guest printed so far

    def stamp(self) -> str:
        return f"[{time.monotonic() - self._t0:9.3f}] "

    def write(self, text: str) -> None:
        self.received += len(text)
        text = self._partial + text.replace("\r\n", "\n").replace("\r", "")
        *lines, self._partial = text.split("\n")
        for line in lines:
            self._file.write(self.stamp() + line + "\n")
        if len(self._partial) > BUFFER_LIMIT:  # a line that never ends
            self._file.write(self.stamp() + self._partial + "\n")
            self._partial = ""

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._partial:
            self._file.write(self.stamp() + self._partial + "\n")
            self._partial = ""
        self._file.close()


class Console:
    """Non-blocking pattern watch over the guest's ttyS0."""

    def __init__(self, fd: int, log: StampedLog):
        self.log = log
        self.spawn = pexpect.fdpexpect.fdspawn(fd, encoding="utf-8", codec_errors="replace",
                                               searchwindowsize=SEARCH_WINDOW, maxread=65536)
        self.spawn.logfile_read = log
        self.tail: list[str] = []

    def poll(self, patterns: dict[str, re.Pattern]) -> list[tuple[str, str]]:
        """Read what is there; return (name, matched line) for every pattern seen."""
        names = list(patterns)
        compiled = [patterns[n] for n in names] + [pexpect.TIMEOUT, pexpect.EOF]
        found = []
        while True:
            index = self.spawn.expect_list(compiled, timeout=0)
            if index >= len(names):
                break
            found.append((names[index], self.spawn.after.rstrip("\r\n")))
        if len(self.spawn.buffer) > BUFFER_LIMIT:
            self.spawn.buffer = self.spawn.buffer[-SEARCH_WINDOW:]
        return found

    def forget(self) -> None:
        """Drop what was read so far from the match buffer (the log keeps it), so that
        later patterns only see new output: the primary kernel's own boot banner must
        not pass for a capture kernel's."""
        while self.spawn.expect_list([ANY_OUTPUT, pexpect.TIMEOUT, pexpect.EOF], timeout=0) == 0:
            pass  # a match is the one way pexpect lets go of what it has read

    def send(self, text: str) -> None:
        self.spawn.send(text)

    def close(self) -> None:
        self.log.close()
