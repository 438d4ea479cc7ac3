"""A stop signal ends labctl within seconds on any schedule, including while qemu.qmp's
event loop runs (the race that once left labctl deaf to SIGINT while saving a snapshot:
an Interrupted raised inside asyncio's callback was logged and lost).

The first test repeats the race on purpose, in this process against a real QEMU: a
thread sends SIGINT at a spread of delays while the main thread is inside QMP commands,
so most signals land inside the event loop.  Every one must end the command loop with
Interrupted within a second, and the guest must go away."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from conftest import ROOT
from labctl import stopping
from labctl.config.schema import load_lab
from labctl.errors import Interrupted
from labctl.guest.machine import Machine, MachineSpec
from labctl.kernel.providers import resolve_kernel

pytestmark = pytest.mark.e2e
KERNEL = "debian-6.12"
ROUNDS = 40  # signals per test: a race that shows in 1 of 12 runs shows here
ACT_SECONDS = 1.0  # from the signal to Interrupted in the caller


@pytest.fixture
def machine(no_leaks, tmp_path):
    lab = load_lab(ROOT / "lab.yaml")
    kernel = resolve_kernel(lab, KERNEL, progress=lambda _: None)
    spec = MachineSpec(kernel=kernel.bzimage, initrd=kernel.bzimage, cmdline="console=ttyS0",
                       memory_mib=256)
    with Machine(spec, tmp_path / "qemu.log") as running:
        yield running
    assert running.rundir is None and not running.alive()


@pytest.fixture
def stop_handler():
    previous = {sig: signal.getsignal(sig) for sig in stopping.STOP_SIGNALS}
    yield
    stopping.reset()
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _signal_later(delay: float, sent: list[float]) -> threading.Thread:
    """A thread (not started) that sends SIGINT to the main thread after `delay`, as the
    kernel gives it to labctl, whose helper threads block stop signals
    (stopping.start_helper); os.kill would let it land on any thread of this process (a
    pytest-xdist worker has an I/O thread of its own)."""
    main = threading.main_thread().ident
    assert main is not None

    def send() -> None:
        time.sleep(delay)
        sent.append(time.monotonic())
        signal.pthread_kill(main, signal.SIGINT)
    return threading.Thread(target=send, daemon=True)


def test_sigint_inside_qmp_commands_interrupts_every_time(machine, stop_handler):
    rng = random.Random(2026)
    inside_loop = 0
    for _ in range(ROUNDS):
        stopping.reset()
        stopping.install()
        sent: list[float] = []
        thread = _signal_later(rng.uniform(0.0, 0.03), sent)
        with pytest.raises(Interrupted, match="received SIGINT"):
            thread.start()  # the signal may land before start() returns
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # back-to-back QMP: mostly inside the loop
                machine.command("query-status")
                machine.command("query-migrate-capabilities")
        acted = time.monotonic()
        thread.join()
        assert sent and acted - sent[0] < ACT_SECONDS, f"took {acted - sent[0]:.2f} s"
        inside_loop += 1
        stopping.reset()  # the client still answers after its loop was stopped
        assert machine.command("query-status")["status"] in ("running", "paused", "prelaunch")
    assert inside_loop == ROUNDS



def test_a_stop_during_a_deferred_section_comes_after_it(stop_handler):
    """A run directory made under stopping.deferred() is owned before a stop can land."""
    stopping.install()
    reached = []
    with pytest.raises(Interrupted):
        with stopping.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            reached.append("end of the section")
    assert reached == ["end of the section"]
