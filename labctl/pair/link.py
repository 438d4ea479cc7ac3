"""The running guest's channels read as one: the console, the control port, QEMU's life and
its registers, and the RAM file.

Every wait of a step goes through `events` (select on both descriptors, then both read to
the end), so no wait misses a byte or a death: a guest that dies is the guest-gone error
(or, under KVM, the reason KVM cannot run it), never a timeout.  The steps (steps.py) and
the flows beside them (reboot.py, distro.py, capture_dump.py) share this instead of
reaching into a Session's private loops.
"""

from __future__ import annotations

import select
import time
from typing import Callable, TypeVar

from labctl.errors import InfraError
from labctl.evidence.verdict import ParkWatch, parse_halted, parse_registers
from labctl.guest.accel import KvmUnusable, kvm_unusable
from labctl.guest.console import Console
from labctl.guest.control import ControlChannel
from labctl.guest.machine import Machine
from labctl.guest.memory import GuestMemory
from labctl.progress import Progress

T = TypeVar("T")
POLL_SECONDS = 0.1
STATUS_SAMPLE_SECONDS = 1.0
EXIT_GRACE_SECONDS = 2.0  # QMP can drop a moment before QEMU's exit status is there


class GuestLink:
    """One launched guest's channels; `phase` names what the lab was doing, for errors."""

    def __init__(self, machine: Machine, console: Console, control: ControlChannel,
                 memory: GuestMemory, progress: Progress):
        self.machine = machine
        self.console = console
        self.control = control
        self.memory = memory
        self.progress = progress
        self.phase = "booting"

    def events(self, patterns: dict, strict: bool = True) -> tuple[list[dict], list[tuple[str, str]]]:
        """What arrived within POLL_SECONDS: control messages, and console lines matching
        `patterns` (name -> regex)."""
        select.select([self.control.fileno(), self.console.spawn.child_fd], [], [], POLL_SECONDS)
        try:
            return self.control.pump(strict=strict), self.console.poll(patterns)
        except ConnectionError as exc:  # the socket went with QEMU (killed from outside)
            if self.machine.exited_within(EXIT_GRACE_SECONDS):
                raise self.guest_gone() from None
            raise InfraError(f"lost the guest's serial ports while {self.phase}: {exc}") from None

    def guest_gone(self) -> InfraError | KvmUnusable:
        return kvm_unusable(self.machine.spec.accel, self.machine.qemu_output()) or \
            InfraError(f"{self.machine.death_reason()} while {self.phase}")

    def check_kvm(self, since: float) -> None:
        """KVM failures leave QEMU alive: look at its log, its run state, and whether the
        guest has said anything on its console since `since`."""
        if self.machine.spec.accel != "kvm":
            return
        silent_for = 0.0 if self.console.log.received else time.monotonic() - since
        if unusable := kvm_unusable("kvm", self.machine.qemu_output(), self.machine.status, silent_for):
            raise unusable

    def wait(self, found: Callable[[list[dict], list[tuple[str, str]]], T | None], timeout: float,
             what: str, timed_out: str, patterns: dict | None = None,
             every: Callable[[], None] | None = None) -> T:
        """The wait before a verdict: pump the control channel and the console until
        found(messages, console hits) returns something.  A guest that dies is the
        guest-gone error, the deadline an InfraError saying `timed_out`; `every` runs
        each STATUS_SAMPLE_SECONDS.  (Observing has loops of its own: there a reset or
        the deadline is a finding, not an error.)"""
        start = time.monotonic()
        next_status = start + STATUS_SAMPLE_SECONDS
        while True:
            messages, hits = self.events(patterns or {})
            if (value := found(messages, hits)) is not None:
                return value
            if not self.machine.alive():
                raise self.guest_gone()
            now = time.monotonic()
            if every and now >= next_status:
                every()
                next_status = now + STATUS_SAMPLE_SECONDS
            if now - start > timeout:
                raise InfraError(timed_out)
            self.progress.tick(what, start)

    def await_message(self, types: tuple[str, ...], timeout: float, what: str) -> dict:
        """The helper's next message of one of `types`."""
        return self.wait(lambda messages, _: next((m for m in messages if m["type"] in types), None),
                         timeout, what, f"timed out after {timeout:g} s waiting for {what}")

    def registers(self) -> str | None:
        """Every vCPU's registers (`info registers -a`); None when QEMU ended meanwhile (a
        reset in the middle of a sample, which the caller judges as a reset)."""
        try:
            return self.machine.hmp("info registers -a")
        except InfraError:
            if self.machine.exited_within(EXIT_GRACE_SECONDS):
                return None
            raise

    def sample(self, watch: ParkWatch) -> str | None:
        """One register sample into `watch` (its park and stop rules read the samples): the
        text for registers.txt, or None when QEMU ended meanwhile."""
        if (text := self.registers()) is not None:
            watch.add(parse_registers(text, watch.arch), parse_halted(text))
        return text

    def code_at(self, address: int) -> bytes:
        """The 8 bytes at a guest-physical address (b"" outside RAM): what a vCPU executes."""
        try:
            return self.memory.read(address, 8)
        except ValueError:
            return b""
