"""Progress output: plain lines for CI logs and pipes, a live status line on a terminal
(a real pseudo-terminal here), and the matrix's per-guest status from a child's log."""

import io
import os
import re
import time

from labctl.campaigns.matrix import last_line
from labctl.progress import LIVE_SECONDS, LiveStatus, Progress


def test_plain_lines_off_a_terminal():
    out = io.StringIO()
    progress = Progress("k/s", stream=out)
    progress._last_tick -= 11  # as if the last line was 11 s ago
    progress.tick("the guest to boot", time.monotonic() - 11)
    progress.say("booted")
    progress.done()
    lines = out.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == \
        ["k/s: still waiting for the guest to boot (11 s)", "k/s: booted"]
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def read_all(master: int) -> str:
    """Everything written to the pty's other end (which is closed by now)."""
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other end is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return b"".join(chunks).decode()


def test_a_live_line_on_a_terminal_is_rewritten_then_cleared():
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        progress = Progress("k/s", stream=tty)
        assert progress.live.enabled
        for waited in (30, 40):
            progress._last_tick -= LIVE_SECONDS
            progress.tick("the guest to boot", time.monotonic() - waited)
        progress.say("booted")
    written = read_all(master)
    waits = [int(s) for s in re.findall(r"k/s: waiting for the guest to boot \((\d+) s\)", written)]
    assert len(waits) == 2 and 30 <= waits[0] < 40 <= waits[1] < 50
    assert written.count("\x1b[1F\x1b[J") == 2  # the first line replaced, then the second
    assert written.rstrip().endswith("k/s: booted")


def test_quiet_and_console_sessions_have_no_live_line():
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        assert not Progress(stream=tty, quiet=True).live.enabled
        assert not Progress(stream=tty, live=False).live.enabled
    read_all(master)
    assert not LiveStatus(io.StringIO()).enabled


def test_a_childs_latest_progress_line(tmp_path):
    log = tmp_path / "child.log"
    assert last_line(log) == ""
    log.write_text("")
    assert last_line(log) == "starting"
    log.write_text("x" * 5000 + "\n[   1.0s] debian-6.12/crash-corrupt: preparing guest assets\n"
                   "[  12.3s] debian-6.12/crash-corrupt: loaded in 2.7 s: kernel@0x3a800000\n\n")
    assert last_line(log) == "loaded in 2.7 s: kernel@0x3a800000"
