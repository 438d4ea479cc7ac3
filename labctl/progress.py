"""Progress on stderr: which phase, how long it has taken, what is being waited for.

On a terminal, waits show a live status line (one per running guest under
`labctl matrix`) rewritten in place; in CI logs and pipes the same facts come
as plain lines, a 'still waiting' one every TICK_SECONDS.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

TICK_SECONDS = 10.0
LIVE_SECONDS = 1.0  # how often a live status line is redrawn


class LiveStatus:
    """Lines rewritten in place at the bottom of a terminal; does nothing elsewhere."""

    def __init__(self, stream: TextIO, enabled: bool | None = None):
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.shown = 0

    def show(self, lines: list[str]) -> None:
        """Replace the lines shown before with these (cut to the terminal's width)."""
        if not self.enabled:
            return
        width = shutil.get_terminal_size().columns - 1
        self.clear(flush=False)
        for line in lines:
            self.stream.write(line[:width] + "\n")
        self.shown = len(lines)
        self.stream.flush()

    def clear(self, flush: bool = True) -> None:
        """Remove the shown lines, so that a plain line takes their place."""
        if self.enabled and self.shown:
            self.stream.write(f"\x1b[{self.shown}F\x1b[J")  # up N lines, erase to the end
            self.shown = 0
            if flush:
                self.stream.flush()


class Progress:
    """Prints phase changes and, during long waits, what is being waited for: live on a
    terminal, a periodic 'still waiting' line elsewhere."""

    def __init__(self, label: str = "", stream: TextIO | None = None, quiet: bool = False,
                 live: bool | None = None):
        self.label = label
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = LiveStatus(self.stream, False if quiet else live)
        self.t0 = time.monotonic()
        self._last_tick = self.t0

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _line(self, text: str) -> str:
        return f"[{self.elapsed():6.1f}s]" + (f" {self.label}" if self.label else "") + f": {text}"

    def say(self, text: str) -> None:
        self._last_tick = time.monotonic()
        if not self.quiet:
            self.live.clear(flush=False)
            print(self._line(text), file=self.stream, flush=True)

    def tick(self, waiting_for: str, since: float) -> None:
        """Called from wait loops: redraws the live line every LIVE_SECONDS, or speaks a
        plain line every TICK_SECONDS."""
        now = time.monotonic()
        waited = f"waiting for {waiting_for} ({now - since:.0f} s)"
        if self.live.enabled:
            if now - self._last_tick >= LIVE_SECONDS:
                self._last_tick = now
                self.live.show([self._line(waited)])
        elif now - self._last_tick >= TICK_SECONDS:
            self.say(f"still {waited}")

    def done(self) -> None:
        """The live line goes: what follows (the verdict line) is plain output."""
        self.live.clear()


def say(text: str) -> None:
    """A command's own progress line (not tied to one guest), on stderr."""
    print(text, file=sys.stderr, flush=True)
