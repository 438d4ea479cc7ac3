"""kexec reboot and mixed kernel versions: the host side of both.

kexec reboot (trigger: kexec-reboot, load.crash: false).  The kernel is loaded into
the kexec slot (kexec_file_load without KEXEC_FILE_ON_CRASH, or `kexec -l`) with a
per-run token on its command line, and entered by reboot(LINUX_REBOOT_CMD_KEXEC)
(the helper's `reboot`, or kexec-tools' own `kexec -e`).  kernel/kexec_core.c
kernel_kexec() shuts the machine down first (kernel_restart_prepare, syscore_shutdown,
machine_shutdown) and only then machine_kexec() copies the segments to where the
table says (mem) and enters purgatory.  Until then the segments are not at `mem`:
kimage_load_normal_segment() copies them into pages of ordinary memory that
kimage_alloc_page() picked (a page sits at its destination only by chance).  So a
corruption cannot be written at `mem`, as for a crash kernel in the crashkernel
region: the host looks up the page of the segment it wants to corrupt by its bytes,
which it knows for the kernel (the bzImage past its setup sectors, what
arch/x86/kernel/kexec-bzimage64.c and kexec-tools' bzImage64 loader load) and the
initrd (the lab's capture initramfs), and corrupts every page-aligned copy in guest
RAM: the kexec source page is one of them; the others (the file in the initramfs's
page cache, freed load buffers) are never read again.

Mixed versions (load.kernel_from: NAME): the kernel loaded, as capture or reboot
kernel, is another catalogue kernel of the same architecture, resolved through the
catalogue (kernel/providers.py) and placed at /boot/vmlinuz of the primary initramfs;
kernel modules the control port needs are carried per release for both kernels.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from labctl.config.schema import Corruption, LabConfig, LoadStep, MachineConfig, Scenario
from labctl.errors import ConfigError, InfraError
from labctl.evidence.reboot import CONSOLE_CMDLINE, rebooted_evidence
from labctl.evidence.segments import SegmentTable
from labctl.evidence.verdict import PURGATORY_REPORT, ParkWatch
from labctl.guest.memory import GuestMemory
from labctl.kernel.image import Kernel
from labctl.kernel.other_arch import control_port_modules
from labctl.kernel.providers import resolve_kernel
from labctl.pair.context import PairContext
from labctl.pair.steps import (
    END_OF_PANIC,
    INITRAMFS_DAMAGED,
    LINUX_BANNER,
    PANIC_LINE,
    SINGLE_VCPU_SAMPLE_SECONDS,
    Finding,
    Session,
    placement_offset,
)
from labctl.result import Outcome

PAGE = 4096
REBOOT_REPLY_SECONDS = 10.0  # the helper says "rebooting" before the syscall


# ---------------------------------------------------------------- mixed versions

def loaded_kernel(lab: LabConfig, kernel: Kernel, scenario: Scenario, progress=print) -> Kernel:
    """The kernel the scenario loads: the run's own, or load.kernel_from's (same arch);
    checked before any boot for what a reboot corruption needs of it."""
    other = _other_kernel(lab, kernel, scenario.load.kernel_from, progress)
    corrupt = scenario.corrupt
    if scenario.trigger == "kexec-reboot" and corrupt and corrupt.segment == "kernel":
        with open(other.capture_image, "rb") as f:
            segment_bytes("kernel", f.read(0x210), b"")
    return other


def _other_kernel(lab: LabConfig, kernel: Kernel, name: str | None, progress) -> Kernel:
    if name is None:
        return kernel
    if name not in lab.kernels:
        raise ConfigError(f"load.kernel_from: {name!r} is not in the catalogue of {lab.path} "
                          f"(known: {', '.join(sorted(lab.kernels))})", key=("load", "kernel_from"))
    other = resolve_kernel(lab, name, progress)
    if other.arch != kernel.arch:
        raise ConfigError(f"load.kernel_from: {name} is an {other.arch} kernel; this run's "
                          f"{kernel.name} is {kernel.arch}: kexec enters a kernel of the same "
                          "architecture", key=("load", "kernel_from"))
    return other


def guest_modules(kernel: Kernel, other: Kernel) -> tuple[tuple[str, Path], ...]:
    """The control-port modules guests/init loads: the run's kernel's alone, or with another
    kernel loaded, each kernel's under its own release (/lib/modules/RELEASE/, which
    guests/init loads after /lib/modules/*.ko)."""
    if other is kernel:
        return control_port_modules(kernel)
    return tuple((f"{k.release}/{name}", path) for k in (kernel, other)
                 for name, path in control_port_modules(k))


def describe_loaded(kernel: Kernel) -> dict:
    """What the verdict compares the booted kernel with (evidence.reboot)."""
    return {"name": kernel.name, "release": kernel.release, "package": kernel.package,
            "version": kernel.version}


# ---------------------------------------------------------------- the reboot load

def reboot_cmdline(machine: MachineConfig, load: LoadStep, params: list[str]) -> str:
    """The reboot kernel's command line: the console and control port (params), the lab's
    words, panic=0 (a panic stays on screen) and the scenario's (Session.load adds the
    run's token).  No crashkernel and no capture options: it is a normal boot."""
    return " ".join(filter(None, [*params, machine.cmdline, "panic=0", load.cmdline]))


def segment_bytes(role: str, image: bytes, initrd: bytes) -> bytes:
    """What a reboot load put in the kernel or initrd segment, as the host knows it: the
    bzImage's protected-mode part (past (setup_sects + 1) * 512 bytes; kexec-bzimage64.c
    bzImage64_load: `kernel + kern16_size`), or the initramfs file."""
    if role == "initrd":
        return initrd
    if image[0x202:0x206] != b"HdrS":
        raise ConfigError("corrupt: a reboot load's kernel segment is found by its bytes, which "
                          "the lab knows for an x86 bzImage only", key=("corrupt", "segment"))
    return image[((image[0x1F1] or 4) + 1) * 512:]


def page_copies(memory: GuestMemory, page: bytes) -> list[int]:
    """Guest physical addresses of every page-aligned copy of `page` in RAM (the data the
    guest wrote: holes in the RAM file are never read)."""
    found = []
    for start, end in memory.written_ranges():
        at = memory.find(page, start, end)
        while at >= 0:
            if at % PAGE == 0:
                found.append(at)
            at = memory.find(page, at + 1, end)
    return found


def corrupt_copies(session: Session, table: SegmentTable, corruption: Corruption,
                   content: bytes) -> dict:
    """Corrupt the chosen bytes in every copy of their page in guest RAM; the evidence."""
    session.phase, start = "corrupting", time.monotonic()
    segment = table.by_role(corruption.segment)
    if segment is None:
        raise ConfigError(f"corrupt: no {corruption.segment} segment was loaded on this kernel",
                          key=("corrupt", "segment"))
    offset = placement_offset(corruption, segment)
    first = offset & ~(PAGE - 1)
    data_end = min(len(content), segment.bufsz)
    if offset + corruption.length > first + PAGE or first >= data_end:
        raise ConfigError(f"corrupt: offset {offset:#x} + length {corruption.length} must lie in "
                          f"one page holding the {segment.role}'s data (bufsz {segment.bufsz:#x}): "
                          "the lab finds a reboot load's page by its bytes", key=("corrupt", "offset"))
    # kimage_load_normal_segment() clears each page before copying: past the data, zeros
    page = content[first:min(first + PAGE, data_end)].ljust(PAGE, b"\0")
    if page.count(page[:1]) == PAGE:
        raise ConfigError(f"corrupt: the {segment.role} page at {first:#x} is one repeated byte, "
                          "which cannot be told apart in RAM; choose another offset",
                          key=("corrupt", "offset"))
    copies = page_copies(session.memory, page)
    if not copies:
        raise InfraError(f"no copy of the {segment.role} page at +{first:#x} is in guest RAM "
                         "after the load (sha256 " + hashlib.sha256(page).hexdigest()[:16] + ")")
    writes = [session.memory.corrupt(address + offset - first, corruption.length,
                                     corruption.pattern, corruption.seed) for address in copies]
    if writes[0].before == writes[0].written:
        raise ConfigError(f"corrupt: pattern '{corruption.pattern}' leaves those bytes as they "
                          "are; choose another offset or pattern", key=("corrupt", "pattern"))
    if not all(w.verified for w in writes):
        raise InfraError("a corruption of a reboot segment's page did not stick")
    session.timings["corrupt"] = round(time.monotonic() - start, 3)
    session.progress.say(f"corrupted {corruption.length} bytes of {segment.role}+{offset:#x} in "
                         f"{len(copies)} cop{'y' if len(copies) == 1 else 'ies'} of its page")
    return {**writes[0].to_json(), "segment": segment.to_json(), "offset": hex(offset),
            "placement": corruption.offset, "page_sha256": hashlib.sha256(page).hexdigest(),
            "copies": [hex(a) for a in copies], "writes": [w.to_json() for w in writes],
            "why_copies": "before the reboot the segment is in kexec source pages of ordinary "
                          "memory, found by its bytes; every page-aligned copy is corrupted"}


# ---------------------------------------------------------------- trigger and verdict

def trigger_reboot(session: Session, method: str) -> None:
    """reboot(LINUX_REBOOT_CMD_KEXEC): kexec-tools' `kexec -e` after `kexec -l`, the
    helper's own syscall after kexec_file_load."""
    session.phase = "rebooting"
    session.progress.say("kexec reboot (" + ("kexec -e" if method == "kexec_load" else
                                             "reboot(LINUX_REBOOT_CMD_KEXEC)") + ")")
    session.console.forget()
    session.purgatory_line, session.panic_lines = None, []
    session.marks["trigger"] = time.monotonic()
    if method == "kexec_load":
        session.control.send("kexec-tool -e")  # no reply: success never returns
        return
    session.control.send("reboot")
    reply = session.link.await_message(("rebooting", "error"), REBOOT_REPLY_SECONDS, "the helper to reboot")
    if reply["type"] == "error":
        raise InfraError(f"the guest helper could not reboot: {reply.get('what')}: {reply.get('strerror')}")


def observe_reboot(session: Session, table: SegmentTable, token: str, release: str) -> Finding:
    """After the kexec reboot: the new kernel's hello, a vCPU parked in purgatory, a reset,
    its panic or damaged initramfs, or a hang at the verdict deadline."""
    session.phase, start = "observing", session.marks["trigger"]
    watch, cmdlines, registers = ParkWatch(table, session.arch), [], ""
    next_sample = time.monotonic() + SINGLE_VCPU_SAMPLE_SECONDS
    while True:
        messages, hits = session.link.events({"cmdline": CONSOLE_CMDLINE, "banner": LINUX_BANNER,
                                          "panic": PANIC_LINE, "end": END_OF_PANIC,
                                          "damaged": INITRAMFS_DAMAGED,
                                          "purgatory": PURGATORY_REPORT}, strict=False)
        session.mark_console(hits, start)
        cmdlines += [line for name, line in hits if name == "cmdline"]
        session.purgatory_line = session.purgatory_line or next(
            (line for name, line in hits if name == "purgatory"), None)
        if damaged := [line for name, line in hits if name == "damaged"]:
            return session.finish(start, Finding(Outcome.CAPTURE_DAMAGED, {"console": damaged[0].strip()[:2000]}))
        if ended := [line for name, line in hits if name == "end"]:
            return session.finish(start, Finding(Outcome.CAPTURE_PANICKED, {"console": ended[0].strip(),
                                                                     "kexec_reboot": True}))
        for message in messages:
            if message["type"] == "hello":
                return session.finish(start, Finding(Outcome.REBOOTED,
                                                      rebooted_evidence(message, cmdlines, token, release)))
            if message["type"] in ("kexec-tool", "error"):  # `kexec -e` or the syscall returned
                raise InfraError(f"the kexec reboot did not happen: {message}")
        if not session.machine.alive():
            return session.finish(start, session.reset(start))
        now = time.monotonic()
        if now >= next_sample:
            if (sample := session.link.sample(watch)) is None:  # a reset, mid-sample
                return session.finish(start, session.reset(start))
            registers = sample
            next_sample = now + SINGLE_VCPU_SAMPLE_SECONDS
            if parked := watch.parked(session.link.code_at):
                return session.finish(start, Finding(Outcome.PURGATORY_REFUSED, {"parked": parked},
                                                      {"registers.txt": registers}))
        if now - start > session.timeouts.verdict:
            return session.finish(start, Finding(Outcome.HANG, {"waited": session.timeouts.verdict,
                                                         **session.seen(watch, start)},
                                                  {"registers.txt": registers}))
        session.progress.tick("the new kernel or a parked vCPU", start)


def run_reboot(pair: PairContext, session: Session, table: SegmentTable) -> Finding:
    """After a reboot load: corrupt if asked, reboot, judge what came up."""
    scenario, reboot = pair.scenario, pair.evidence["reboot"]
    if scenario.corrupt:
        assert pair.assets is not None, "built before the guest started"
        content = segment_bytes(scenario.corrupt.segment, pair.loaded_kernel.capture_image.read_bytes(),
                                pair.assets.capture_initramfs.read_bytes())
        pair.evidence["corruption"] = corrupt_copies(session, table, scenario.corrupt, content)
    trigger_reboot(session, scenario.load.method)
    finding = observe_reboot(session, table, reboot["token"], pair.loaded_kernel.release)
    if scenario.corrupt:
        pair.evidence["corruption"].update(at_destination(session.memory, pair.evidence["corruption"]))
    return finding


def at_destination(memory: GuestMemory, corruption: dict) -> dict:
    """After the reboot, machine_kexec has copied the segments to their destination (mem):
    the corrupted bytes there show that one of the corrupted copies was the kexec source
    page, the one purgatory hashed."""
    address = int(corruption["segment"]["mem"], 16) + int(corruption["offset"], 16)
    now = memory.read(address, corruption["length"]).hex()
    return {"destination": hex(address), "at_destination": now,
            "reached_destination": now == corruption["written"]}
