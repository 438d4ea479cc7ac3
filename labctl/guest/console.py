"""The kernel console (ttyS0): read through pexpect, logged with host timestamps.

Guest output is untrusted: it is decoded with replacement, logged line by line
with the host time since the run started, and only ever matched against
patterns, one complete line at a time; the in-memory buffer is bounded.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pexpect
import pexpect.fdpexpect

READ_SIZE = 65536
BUFFER_LIMIT = 64 * 1024  # the longest line kept waiting for its newline


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
    """Non-blocking pattern watch over the guest's ttyS0.

    Every character read is matched exactly once, however large a read is: the
    reader splits what arrives into complete lines and matches each line against
    every pattern once (a line still arriving waits for its newline); nothing is
    searched twice and nothing is skipped.  pexpect reads (and logs) the bytes."""

    def __init__(self, fd: int, log: StampedLog):
        self.log = log
        self.spawn = pexpect.fdpexpect.fdspawn(fd, encoding="utf-8", codec_errors="replace",
                                               maxread=READ_SIZE)
        self.spawn.logfile_read = log
        self._partial = ""  # the start of a line whose newline has not come yet
        self.lines_seen = 0  # complete lines matched so far
        self.last_output = time.monotonic()  # when the guest last printed anything

    def _read(self) -> str:
        """Everything the guest printed since the last read (pexpect logs it)."""
        chunks = []
        while True:
            try:
                chunks.append(self.spawn.read_nonblocking(READ_SIZE, timeout=0))
            except (pexpect.TIMEOUT, pexpect.EOF):
                if chunks:
                    self.last_output = time.monotonic()
                return "".join(chunks)

    def _lines(self) -> list[str]:
        """The complete lines (with their newline) now there; a line longer than
        BUFFER_LIMIT without a newline counts as complete, so memory stays bounded."""
        text = self._partial + self._read()
        *lines, self._partial = text.split("\n")
        complete = [line + "\n" for line in lines]
        if len(self._partial) > BUFFER_LIMIT:
            complete.append(self._partial)
            self._partial = ""
        self.lines_seen += len(complete)
        return complete

    def poll(self, patterns: dict[str, re.Pattern]) -> list[tuple[str, str]]:
        """Read what is there; return (name, matched text) for every match of every
        pattern in every complete line, in the order they were printed."""
        return [hit for line in self._lines() for hit in match_line(line, patterns)]

    def forget(self) -> None:
        """Drop what was read so far from the match buffer (the log keeps it), so that
        later patterns only see new output: the primary kernel's own boot banner must
        not pass for a capture kernel's."""
        self._lines()
        self._partial = ""

    def send(self, text: str) -> None:
        self.spawn.send(text)

    def close(self) -> None:
        self.log.close()


def match_line(line: str, patterns: dict[str, re.Pattern]) -> list[tuple[str, str]]:
    """(name, matched text) for the matches in one line, left to right; a match takes its
    characters, so no character counts twice (the leftmost match wins, then the first
    pattern named)."""
    found = sorted((m.start(), order, -m.end(), name, m) for order, (name, pattern) in
                   enumerate(patterns.items()) for m in pattern.finditer(line))
    hits, taken = [], 0
    for start, _, _, name, m in found:
        if start >= taken and m.end() > start:
            hits.append((name, m[0].rstrip("\r\n")))
            taken = m.end()
    return hits
