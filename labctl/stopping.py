"""Stop signals (Ctrl-C, SIGTERM, SIGHUP) as a request the lab acts on.

A Python signal handler runs between two bytecodes of the main thread, wherever that
thread is.  Raising from it is safe in the lab's own code, but not inside an asyncio
event loop someone else runs (qemu.qmp's synchronous client runs one for every QMP
command): asyncio catches the exception in its callback, logs "Exception in callback
Task.task_wakeup" and carries on, and the stop is lost while QEMU keeps running.  So
the handler records the request first; inside a running event loop it only asks that
loop to stop (the QMP call then fails and the Machine turns that into Interrupted),
and everywhere else it raises Interrupted as before.  Polling loops call check(), so
a request is acted on within one poll whatever the schedule.
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import contextmanager

from labctl.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_state: dict[str, str | None] = {"reason": None}


def requested() -> str | None:
    """The stop request ('received SIGINT'), or None if none came."""
    return _state["reason"]


def request(reason: str) -> None:
    """Record a stop request (the handler's first step; tests call it directly)."""
    if _state["reason"] is None:
        _state["reason"] = reason


def reset() -> None:
    """Forget a request: a worker process forked from a stopping parent starts clean."""
    _state["reason"] = None


def check() -> None:
    """Raise Interrupted if a stop was requested: polling loops call this each round."""
    if _state["reason"] is not None:
        raise Interrupted(_state["reason"])


def interrupt_here(reason: str) -> None:
    """Act on a request from inside a signal handler: stop the event loop that runs in
    this thread (woken through its self-pipe, so a blocked select returns at once), or
    raise Interrupted where no event loop runs."""
    request(reason)
    loop = asyncio._get_running_loop()  # noqa: SLF001 - the one way to ask from a handler
    if loop is not None:
        loop.call_soon_threadsafe(loop.stop)
        return
    raise Interrupted(reason)


def _terminate(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    """The first stop signal stops the run; later ones are ignored, so that an impatient
    second Ctrl-C cannot cut short the cleanup (bounded: QEMU is killed within seconds)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    interrupt_here(f"received {signal.Signals(signum).name}")


@contextmanager
def deferred():
    """Hold stop signals back while a resource comes into being and gets its owner (a run
    directory made but not yet known to the Machine would be left behind by a stop that
    lands in between); a signal that came meanwhile is handled at the end."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def install() -> None:
    """Route every stop signal through _terminate (labctl's main process)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _terminate)
