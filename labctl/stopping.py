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
import threading
from contextlib import contextmanager

from labctl.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_state: dict[str, str | None] = {"reason": None}
_deferring = [0]  # how many deferred() sections the main thread is inside
_foreign = [0]  # how many calls into a library that runs its own event loop (foreign_loop)


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
    if _deferring[0]:
        return  # acted on when the section ends (deferred)
    loop = asyncio._get_running_loop()  # noqa: SLF001 - the one way to ask from a handler
    if loop is None and _foreign[0]:  # between two runs of the library's loop: its next run
        loop = asyncio.get_event_loop_policy().get_event_loop()
    if loop is not None:
        loop.call_soon_threadsafe(_stop_if_requested, loop)
        return
    raise Interrupted(reason)


def _stop_if_requested(loop: asyncio.AbstractEventLoop) -> None:
    """Stop the loop, unless the request was dropped meanwhile: a signal that lands as a
    command completes leaves this callback queued for the loop's next run, which must not
    be stopped for a request already dealt with (reset)."""
    if _state["reason"] is not None:
        loop.stop()


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
    lands in between); a signal that came meanwhile is acted on when the section ends.
    A flag the handler reads, not a signal mask: Python runs handlers in the main thread
    whichever thread the kernel gave the signal to, so a mask on the main thread alone does
    not hold them back in a process with other threads (the console relay of arm64 and
    riscv64 guests, a pytest-xdist worker's I/O thread)."""
    _deferring[0] += 1
    try:
        yield
    finally:
        _deferring[0] -= 1
    if not _deferring[0]:
        check()


@contextmanager
def foreign_loop():
    """Around a call into a library that runs its own asyncio event loop (qemu.qmp's
    synchronous client): a stop signal never raises inside that library's code, not even
    between two runs of its loop, where a raise can leave run_until_complete's done-callback
    on a future that later stops an unrelated run ("Event loop stopped before Future
    completed" on the next QMP command); it stops the loop at its next iteration instead,
    and the caller acts on the request when the call returns (check())."""
    _foreign[0] += 1
    try:
        yield
    finally:
        _foreign[0] -= 1
        if _state["reason"] is not None:
            _settle()


def _settle() -> None:
    """Spend now what a stop left queued on the library's loop, so that it cannot stop the
    next run (shutdown's QMP quit): a command that completed in the iteration the stop came
    in leaves run_until_complete's done-callback scheduled, and it stops whichever run
    comes next.  One run of a no-op takes it (and this module's own stop callback)."""
    loop = asyncio.get_event_loop_policy().get_event_loop()
    if loop.is_running() or loop.is_closed():
        return
    try:
        loop.run_until_complete(asyncio.sleep(0))
    except RuntimeError:  # stopped by what was queued: spent
        pass


def start_helper(thread: threading.Thread) -> None:
    """Start a helper thread that never takes a stop signal (it inherits a mask blocking
    them), so the kernel gives every stop signal to the main thread, where the handler runs
    and whose blocking select() the signal interrupts at once."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def install() -> None:
    """Route every stop signal through _terminate (labctl's main process)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _terminate)
