"""Progress lines on stderr: which phase, how long it has taken, what is being waited for."""

from __future__ import annotations

import sys
import time

TICK_SECONDS = 10.0


class Progress:
    """Prints phase changes and, during long waits, a periodic 'still waiting' line."""

    def __init__(self, label: str = "", stream=None, quiet: bool = False):
        self.label = label
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.t0 = time.monotonic()
        self._last_tick = self.t0

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        self._last_tick = time.monotonic()
        if not self.quiet:
            prefix = f"[{self.elapsed():6.1f}s]" + (f" {self.label}" if self.label else "")
            print(f"{prefix}: {text}", file=self.stream, flush=True)

    def tick(self, waiting_for: str, since: float) -> None:
        """Called from wait loops; speaks only every TICK_SECONDS."""
        now = time.monotonic()
        if now - self._last_tick >= TICK_SECONDS:
            self.say(f"still waiting for {waiting_for} ({now - since:.0f} s)")


def say(text: str) -> None:
    """A command's own progress line (not tied to one guest), on stderr."""
    print(text, file=sys.stderr, flush=True)
