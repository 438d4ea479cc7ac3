"""The steps of one scenario on a running guest: boot, load, corrupt, trigger, observe.

Each step waits on evidence, never on a fixed sleep: the loop wakes when the
console or the control port has data (select), and every step ends as soon
as what it waits for is there.  A step that cannot go on raises an
InfraError (the lab or the guest broke) or ConfigError (the scenario asks for
something this kernel does not have); an outcome is returned as a Finding.
"""

from __future__ import annotations

import errno
import os
import random
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from labctl.config.arch import Arch, get_arch
from labctl.config.schema import Corruption, Timeouts
from labctl.errors import ConfigError, InfraError
from labctl.evidence import causes, dump_check, dump_cpus
from labctl.evidence.identity import (
    IdentityWatch,
    RamLog,
    fault_loop_vote,
    new_token,
    with_token,
)
from labctl.evidence.oops import MAX_LINES as MAX_OOPS_LINES
from labctl.evidence.oops import OOPS_START, OopsReport, parse_oops
from labctl.evidence.segments import Segment, SegmentTable, parse_segment_table
from labctl.evidence.smp import CpuWatch
from labctl.evidence.verdict import PURGATORY_REPORT, ParkWatch, purgatory_report
from labctl.evidence.vmcore import check_vmcore
from labctl.guest.assets import GUEST_INITRD
from labctl.guest.console import Console, StampedLog
from labctl.guest.control import ControlChannel
from labctl.guest.machine import Machine
from labctl.guest.memory import GuestMemory
from labctl.kernel.facts import from_config_gz
from labctl.kernel.load_images import guest_path
from labctl.pair import capture_dump, identify
from labctl.pair.dump_open import check_saved
from labctl.pair.hotplug import read_headers
from labctl.pair.link import GuestLink
from labctl.pair.vmcore_save import VMCORE
from labctl.progress import Progress
from labctl.result import Outcome

KEXEC_FILE_ON_CRASH = 0x2
KEXEC_FILE_DEBUG = 0x8

REGISTER_SAMPLE_SECONDS = 0.25
# One vCPU: a park is recognised by the self-jump code at RIP whatever the interval, so sample
# faster (a refusal's verdict comes ~0.6 s sooner).  Several vCPUs keep 0.25 s: CpuWatch judges
# the other CPUs from the last two samples, and 0.1 s there coincided with 2 of 14 runs of
# crash-intact-cpu1 on 6.1 seeing vCPU 0 at two RIPs in NMI context (0 of 8 at 0.25 s).
SINGLE_VCPU_SAMPLE_SECONDS = 0.1
# identity.RamLog: read the capture kernel's log from its memory once the console has been
# silent this long, at most this often, unless the console showed its command line (a first
# scan of a 256 MiB reservation takes 0.2-0.6 s on a loaded 2-core host).
RAM_SCAN_QUIET_SECONDS = 3.0
RAM_SCAN_SECONDS = 3.0

# Whole lines (up to their newline): a pattern that matched a line still arriving recorded
# "Kernel panic - not syncing: sysrq trigge" as the console's panic line.
PANIC_LINE = re.compile(r"Kernel panic - not syncing[^\r\n]*\r?\n")
SYSRQ_LINE = re.compile(r"sysrq: Trigger a crash[^\r\n]*\r?\n")
# guests/init's check of the initramfs the capture kernel unpacked (guest_assets.manifest_bytes)
INITRAMFS_DAMAGED = re.compile(r"kexec-lab: initramfs damaged:[^\r\n]*\r?\n")
# Printed only once panic() has given up on kexec: no capture kernel will run.
END_OF_PANIC = re.compile(r"---\[ end Kernel panic - not syncing[^\r\n]*\r?\n")
LINUX_BANNER = re.compile(r"Linux version \S+")
# kexec-tools names kexec_load(2)'s errno only in words (kexec/kexec.c my_load).
KEXEC_TOOLS_FAILED = re.compile(r"kexec_load failed: (.+?)\s*$")
STRERROR_ERRNO = {os.strerror(n): n for n in errno.errorcode}
# Kernel log lines that say why a load was refused: the lockdown LSM, the signature check.
SIGNATURE_LOG = re.compile(r"Lockdown:|signature|PKCS#?7|PEFILE|X\.509", re.I)
SIGNATURE_LOG_MAX = 10
# The running kernel failing inside the load (tiny-6.12-arm64's machine_kexec_post_load()
# on a reboot load): kexec-tools dies with it, or the helper does, inside the syscall.
CONSOLE_LINE = re.compile(r"[^\r\n]+")  # every console line, once
OOPS_REPORT_SECONDS = 5.0  # an oops report prints in well under a second, even under TCG


def kexec_tools_errno(output: list[str]) -> dict:
    """The errno behind kexec-tools' "kexec_load failed: <strerror>" ({} if it did not say)."""
    for line in reversed(output):
        if (m := KEXEC_TOOLS_FAILED.search(line)) and m[1] in STRERROR_ERRNO:
            return {"errno": STRERROR_ERRNO[m[1]], "strerror": m[1]}
    return {}


@dataclass
class Finding:
    """An outcome and the evidence that supports it."""

    outcome: str
    evidence: dict = field(default_factory=dict)
    attachments: dict[str, str] = field(default_factory=dict)  # file name -> text


@dataclass
class Loaded:
    """What the load did: rejected (errno, or kexec-tools' exit status) or a segment table."""

    message: dict
    table: SegmentTable

    @property
    def rejected(self) -> bool:
        return self.message.get("rc", -1) != 0

    def evidence(self) -> dict:
        """The facts a result records about the load, for either method."""
        keys = ("rc", "errno", "strerror", "flags", "dynamic_debug", "kexec_crash_loaded",
                "capture_token")
        facts = {k: self.message[k] for k in keys if k in self.message}
        if "output" in self.message:  # kexec-tools says why in its last words
            facts["tool_output_tail"] = self.message["output"][-5:]
        said = [line for line in self.message.get("log", []) if SIGNATURE_LOG.search(line)]
        if said:
            facts["kernel_log"] = said[:SIGNATURE_LOG_MAX]
        if oops := [line for line in self.message.get("log", []) if OOPS_START.search(line)]:
            facts["kernel_oops"] = oops[:SIGNATURE_LOG_MAX]
        return {**facts, "segments": self.table.to_json()}


class PrimaryOops(InfraError):
    """The running kernel oopsed outside kexec while a load ran (its report names another
    task and no kexec frame): no evidence about kexec either way, so the pair boots it again
    once (runner.PairRun), keeping this attempt's logs and report."""

    def __init__(self, message: str, report: OopsReport):
        super().__init__(message)
        self.report = report


def load_oops_error(report: OopsReport | None) -> InfraError:
    """No verdict: the running kernel oopsed while a load ran; where, as its report says."""
    assert report is not None  # called once an oops line was read
    within = {True: "inside kexec_file_load", False: "outside kexec_file_load, while it ran",
              None: "while kexec_file_load ran (its report does not say where)"}[report.in_kexec()]
    message = f"the running kernel oopsed {within}, {report.where()}: {report.first_line!r} (see serial.log)"
    return PrimaryOops(message, report) if report.in_kexec() is False else InfraError(message)


def placement_offset(corruption: Corruption, segment: Segment) -> int:
    """Byte offset into the segment for a named placement or an integer offset."""
    where, length = corruption.offset, corruption.length
    offsets = {"start": 0, "middle": segment.bufsz // 2, "end": segment.bufsz - length,
               "tail": segment.bufsz, "page": (segment.bufsz // 2) & ~0xFFF}
    offset = offsets[where] if isinstance(where, str) else where
    if offset < 0 or offset + length > segment.memsz:
        raise ConfigError(f"corrupt: offset {offset:#x} + length {length:#x} is outside the "
                          f"{segment.role} segment (bufsz {segment.bufsz:#x}, memsz "
                          f"{segment.memsz:#x}) on this kernel", key=("corrupt", "offset"))
    return offset


def scaled_timeouts(timeouts: Timeouts, arch: Arch) -> Timeouts:
    """lab.yaml's backstops, stretched for an architecture TCG runs more slowly."""
    f = arch.tcg_slowdown
    return Timeouts(boot=timeouts.boot * f, load=timeouts.load * f, verdict=timeouts.verdict * f)


@contextmanager
def opened_session(machine: Machine, logs: Path, t0: float, timeouts: Timeouts,
                   progress: Progress) -> Iterator[Session]:
    """The one way to a Session on a launched Machine: its console and control port logged
    into `logs` (stamped from t0), its RAM file read at the architecture's RAM base,
    lab.yaml's timeouts scaled for that architecture; all three closed however it ends."""
    assert machine.console and machine.control and machine.ram_path, "launched"
    arch = get_arch(machine.spec.arch)
    with ExitStack() as stack:
        console = stack.enter_context(closing(Console(machine.console.fileno(),
                                                      StampedLog(logs / "serial.log", t0))))
        control = stack.enter_context(closing(ControlChannel(machine.control, logs / "control.log", t0)))
        memory = stack.enter_context(closing(GuestMemory(machine.ram_path, arch.ram_base)))
        yield Session(machine, console, control, memory, scaled_timeouts(timeouts, arch), progress)


class Session:
    """One guest going through a scenario; records phase timings as it goes."""

    def __init__(self, machine: Machine, console: Console, control: ControlChannel,
                 memory: GuestMemory, timeouts: Timeouts, progress: Progress):
        self.link = GuestLink(machine, console, control, memory, progress)
        self.machine, self.console, self.control, self.memory = machine, console, control, memory
        self.arch = get_arch(machine.spec.arch)
        self.timeouts = timeouts
        self.progress = progress
        self.timings: dict[str, float] = {}
        self.marks: dict[str, float] = {}
        self.purgatory_line: str | None = None  # an instrumented purgatory's COM1 report
        self.cpus: CpuWatch | None = None  # several CPUs: where the panic ran, the others
        self.primary: dict = {}  # the primary kernel's hello: its RAM, reservation, facts
        self.panic_lines: list[str] = []  # what the console showed of the panic
        self.save_vmcore_to: Path | None = None  # --save-vmcore: the pair's artifacts directory
        self.token: str | None = None  # on the loaded capture kernel's command line (identity.py)
        self.tool_output: list[str] = []  # what kexec-tools said at the load (causes.py)
        self.low_memory: bytes | None = None  # RAM below 1 MiB at the trigger (dump_check.py)
        self.hot_memory_files: list[tuple[int, Path]] = []  # hot-added DIMMs: address, file
        self.symbols_cache: Path | None = None  # decoded kallsyms per kernel build (kernel_symbols.py)

    @property
    def phase(self) -> str:
        """What the lab is doing with this guest (an error or an interruption names it)."""
        return self.link.phase

    @phase.setter
    def phase(self, value: str) -> None:
        self.link.phase = value

    def _timed(self, name: str, start: float) -> None:
        self.timings[name] = round(time.monotonic() - start, 3)

    # ------------------------------------------------------------ steps
    def boot(self) -> dict:
        """Wait for the primary kernel's helper to say hello."""
        self.phase, start = "booting", time.monotonic()
        self.progress.say(f"booting the primary kernel ({self.machine.spec.accel})")

        def hello(messages: list[dict], hits: list[tuple[str, str]]) -> dict | None:
            if found := next((m for m in messages
                              if m["type"] == "hello" and m.get("role") == "primary"), None):
                return found
            if hits:
                raise InfraError(f"the guest kernel panicked while booting: {hits[0][1]!r} "
                                 "(see serial.log)")
            return None

        message = self.link.wait(hello, self.timeouts.boot, "the guest to boot",
                             f"the guest did not reach init within {self.timeouts.boot:g} s "
                             "(no hello on the control port); see serial.log",
                             patterns={"panic": PANIC_LINE}, every=lambda: self.link.check_kvm(start))
        self.primary = message
        self._timed("boot", start)
        self.progress.say(f"booted {message.get('release')} in {self.timings['boot']:.1f} s")
        return message

    def kernel_config(self) -> dict[str, str] | None:
        """The running kernel's /proc/config.gz, parsed (None if it cannot be read)."""
        self.control.send("kernel-config")
        message = self.link.await_message(("kernel-config",), self.timeouts.load, "/proc/config.gz")
        return from_config_gz(message.get("gz"))

    def load(self, cmdline: str, method: str = "kexec_file_load", image: str = "default",
             crash: bool = True) -> Loaded:
        """Load a capture kernel and parse the segment table its loader printed.

        kexec_file_load goes through the helper's raw syscall with ON_CRASH|DEBUG;
        kexec_load through kexec-tools (`kexec -p -d -c`), as distributions do.
        crash=False: the kexec (reboot) slot instead (no ON_CRASH; `kexec -l`).
        """
        self.phase, start = "loading", time.monotonic()
        self.progress.say(f"loading the {'capture' if crash else 'reboot'} kernel ({method}, image {image})")
        kernel = guest_path(image)
        self.token = new_token()
        cmdline = with_token(cmdline, self.token)
        if method == "kexec_load":
            args = ["-p" if crash else "-l", "-d", "-c", kernel, f"--initrd={GUEST_INITRD}", f"--append={cmdline}"]
            self.control.send("kexec-tool " + "\t".join(args))
            message = self.link.await_message(("kexec-tool", "error"), self.timeouts.load, "kexec-tools")
            lines = message.get("output", []) + message.get("log", [])
            if message.get("rc"):
                message.update(kexec_tools_errno(message.get("output", [])))
        else:
            flags = (KEXEC_FILE_ON_CRASH if crash else 0) | KEXEC_FILE_DEBUG
            self.console.forget()  # an oops in what the console said before is not this load's
            self.control.send(f"load {flags:x} {kernel} {GUEST_INITRD} {cmdline}")
            message = self._await_load_reply()
            lines = message.get("log", [])
        if message["type"] == "error":
            raise InfraError(f"the guest helper could not load: {message.get('what')}: "
                             f"{message.get('strerror')}")
        self._timed("load", start)
        message["capture_token"] = self.token
        self.tool_output = message.get("output", [])
        unlogged = self.arch.file_kernel_unlogged and method == "kexec_file_load"
        loaded = Loaded(message=message, table=parse_segment_table(lines, unlogged))
        self._say_loaded(loaded)
        return loaded

    def _await_load_reply(self) -> dict:
        """The helper's answer to a load.  An oops on the console instead is read to the end
        of its report (OOPS_REPORT_SECONDS at most) and named with where it happened: when it
        is kexec_file_load's, the helper died in the syscall and will never answer."""
        report: list[str] = []  # the console's lines from an oops on
        oops_at: float | None = None

        def found(messages: list[dict], hits: list[tuple[str, str]]) -> dict | None:
            nonlocal oops_at
            report.extend(line for _, line in hits if report or OOPS_START.search(line))
            if not report:
                return next((m for m in messages if m["type"] in ("loaded", "error")), None)
            oops_at = oops_at or time.monotonic()
            oops = parse_oops(report)
            if oops is None or oops.complete or len(report) >= MAX_OOPS_LINES \
                    or time.monotonic() - oops_at > OOPS_REPORT_SECONDS:
                raise load_oops_error(oops)
            return None
        return self.link.wait(found, self.timeouts.load, "the load to finish",
                              f"timed out after {self.timeouts.load:g} s waiting for the load to finish",
                              patterns={"line": CONSOLE_LINE})

    def _say_loaded(self, loaded: Loaded) -> None:
        message = loaded.message
        if loaded.rejected:
            why = message.get("strerror") or " / ".join(message.get("output", [])[-1:])
            self.progress.say(f"load failed: rc {message.get('rc')} errno {message.get('errno')} ({why})")
        else:
            roles = ", ".join(f"{s.role or '?'}@{s.mem:#x}" for s in loaded.table.segments)
            self.progress.say(f"loaded in {self.timings['load']:.1f} s: {roles or 'no segment table'}")

    def unload(self, method: str) -> dict:
        """Unload the capture kernel again; the evidence says whether it is gone."""
        self.phase = "unloading"
        if method == "kexec_load":
            self.control.send("kexec-tool -p\t-u")
            message = self.link.await_message(("kexec-tool",), self.timeouts.load, "kexec -p -u")
        else:
            self.control.send("unload")
            message = self.link.await_message(("unloaded",), self.timeouts.load, "the unload")
        self.progress.say(f"unloaded: rc {message.get('rc')}, kexec_crash_loaded="
                          f"{message.get('kexec_crash_loaded')}")
        return {"rc": message.get("rc"), "kexec_crash_loaded": message.get("kexec_crash_loaded")}

    def ask(self, line: str, types: tuple[str, ...], what: str) -> dict:
        """Send the helper one command and wait (load timeout) for its reply."""
        self.control.send(line)
        return self.link.await_message(types, self.timeouts.load, what)

    def corrupt(self, table: SegmentTable, corruption: Corruption) -> dict:
        """Overwrite bytes of a loaded segment through the RAM file; return the evidence."""
        self.phase, start = "corrupting", time.monotonic()
        segment = table.by_role(corruption.segment)
        if segment is None:
            known = ", ".join(s.role or f"#{s.index}" for s in table.segments) or "none"
            raise ConfigError(f"corrupt: no {corruption.segment} segment was loaded on this "
                              f"kernel (loaded: {known})", key=("corrupt", "segment"))
        offset = placement_offset(corruption, segment)
        write = self.memory.corrupt(segment.mem + offset, corruption.length,
                                    corruption.pattern, corruption.seed)
        if write.before == write.written:
            raise ConfigError(f"corrupt: the {corruption.length} bytes at {write.address:#x} "
                              f"({segment.role}+{offset:#x}) already hold what pattern "
                              f"'{corruption.pattern}' writes, so nothing would be corrupted; "
                              "choose another offset or pattern", key=("corrupt", "pattern"))
        if not write.verified:
            raise InfraError(f"corruption at {write.address:#x} did not stick "
                             f"(read back {write.after[:64]}...)")
        self._timed("corrupt", start)
        self.progress.say(f"corrupted {corruption.length} bytes of {segment.role} at "
                          f"{write.address:#x} (+{offset:#x}, {corruption.pattern})")
        return {**write.to_json(), "segment": segment.to_json(), "offset": hex(offset),
                "placement": corruption.offset}

    def trigger(self, trigger: str, cpu: int | None = None) -> None:
        """Crash the guest: sysrq and init-exit from inside, nmi armed inside, sent by QMP;
        cpu: the helper pins itself there first and says where it runs."""
        self.phase = "panicking"
        self.progress.say(f"triggering a panic ({trigger}" + (f" on CPU {cpu})" if cpu is not None else ")"))
        self.console.forget()
        self.purgatory_line, self.panic_lines = None, []
        self.low_memory = dump_check.low_memory_now(self.memory)
        self.marks["trigger"] = time.monotonic()
        self.control.send(f"panic {trigger}" + (f" {cpu}" if cpu is not None else ""))
        if trigger == "nmi" or cpu is not None:
            reply = self.link.await_message(("panicking", "error"), self.timeouts.load, "the helper to panic")
            if reply["type"] == "error":
                raise InfraError(f"the guest helper could not panic: {reply.get('what')}: "
                                 f"{reply.get('strerror')}")
            if self.cpus is not None:
                self.cpus.pinned = reply.get("cpu")
        if trigger == "nmi":
            self.machine.command("inject-nmi")

    def observe(self, table: SegmentTable, release: str, within: float | None = None) -> Finding:
        """After the panic: capture kernel's hello, a parked vCPU, a reset, or a hang.

        within: look for at most this many more seconds (`labctl console`'s `verdict`);
        if that window closes before the verdict deadline, the result is Outcome.NO_VERDICT with
        what was seen so far, and nothing is recorded as a verdict.
        """
        self.phase, start = "observing", self.marks.get("trigger", time.monotonic())
        watch = ParkWatch(table, self.arch)
        identity = IdentityWatch(self.token, RamLog(self.token, self.primary.get("crashkernel")))
        next_scan = 0.0
        registers = ""
        every = REGISTER_SAMPLE_SECONDS if self.cpus else SINGLE_VCPU_SAMPLE_SECONDS
        next_sample = time.monotonic() + every
        window_end = None if within is None else time.monotonic() + within
        while True:
            messages, hits = self.link.events({"panic": PANIC_LINE, "sysrq": SYSRQ_LINE,
                                           "banner": LINUX_BANNER, "damaged": INITRAMFS_DAMAGED,
                                           "end": END_OF_PANIC, "purgatory": PURGATORY_REPORT,
                                           **IdentityWatch.patterns,
                                           **(CpuWatch.patterns if self.cpus else {})},
                                          strict=False)
            self.mark_console(hits, start)
            identity.console(hits)
            if self.cpus:
                self.cpus.console(hits)
            self.purgatory_line = self.purgatory_line or next(
                (line for name, line in hits if name == "purgatory"), None)
            if damaged := [line for name, line in hits if name == "damaged"]:
                said = identify.confirm_capture(self, identity, identity.token_vote("init-line", damaged[0]),
                                                identity.unended_vote())
                return self.finish(start, Finding(Outcome.CAPTURE_DAMAGED, {"console": damaged[0].strip()[:2000],
                                                                     "identity": said}))
            if ended := [line for name, line in hits if name == "end"]:
                outcome, evidence = identify.console_end(self, identity, ended[0])
                return self.finish(start, Finding(outcome, {"console": ended[0].strip(), "identity": evidence}))
            for message in messages:
                # After the panic only a kexec'd kernel can say hello, even one that
                # failed to set up /proc/vmcore (its role then reads "primary").
                if message["type"] == "hello":
                    return self.finish(start, self.capture_booted(message, release, table, identity))
            if not self.machine.alive():
                return self.finish(start, self.reset(start))
            now = time.monotonic()
            if now >= next_sample:
                if (sample := self.link.sample(watch)) is None:  # a reset, mid-sample
                    return self.finish(start, self.reset(start))
                registers = sample
                if self.cpus:
                    self.cpus.sample(registers)
                next_sample = now + every
                if parked := watch.parked(self.link.code_at):
                    return self.finish(start, Finding(Outcome.PURGATORY_REFUSED, {"parked": parked},
                                                       {"registers.txt": registers}))
                if now >= next_scan and now - self.console.last_output >= RAM_SCAN_QUIET_SECONDS \
                        and identity.needs_ram():
                    next_scan = now + RAM_SCAN_SECONDS
                    ended_in_ram, _ = identify.scan_ram(self, identity)
                    if ended_in_ram:
                        claim, evidence = ended_in_ram
                        return self.finish(start, Finding(
                            identify.ended(claim), evidence))
                if stopped := watch.stopped(self.link.code_at, self.primary.get("crashkernel")):
                    stopped["capture_banner_seen"] = "capture_banner" in self.marks
                    said = identify.confirm_capture(self, identity, identity.console_vote(),
                                                    identity.unended_vote())
                    return self.finish(start, Finding(Outcome.CAPTURE_HALTED, {"halted": stopped, "identity": said},
                                                       {"registers.txt": registers}))
                if faulted := watch.faulting(self.link.code_at, lambda cpu, pc: identify.translate(self, cpu, pc)):
                    said = identify.confirm_capture(self, identity, identity.console_vote(),
                                                    identity.unended_vote(), fault_loop_vote(faulted))
                    return self.finish(start, Finding(Outcome.CAPTURE_HALTED, {"halted": faulted, "identity": said},
                                                      {"registers.txt": registers}))
            if now - start > self.timeouts.verdict:
                return self.finish(start, Finding(Outcome.HANG, {
                    "waited": self.timeouts.verdict, **self.seen(watch, start),
                    "positions": [p.to_json() for p in identify.positions(self)]},
                    {"registers.txt": registers}))
            if window_end is not None and now > window_end:
                return Finding(Outcome.NO_VERDICT, self.seen(watch, start))
            self.progress.tick("the capture kernel or a parked vCPU", start)

    # ------------------------------------------------------------ observe helpers
    def mark_console(self, hits: list[tuple[str, str]], start: float) -> None:
        for name, line in hits:
            if name in ("panic", "sysrq") and "capture_banner" not in self.marks:
                self.panic_lines.append(line.strip())
            key = {"panic": "panic_line", "sysrq": "sysrq_line", "banner": "capture_banner",
                   "end": "end_of_panic", "purgatory": "purgatory_report"}.get(name)
            if key and key not in self.marks:
                self.marks[key] = time.monotonic()
                self.timings[f"panic_to_{key}"] = round(self.marks[key] - start, 3)

    def seen(self, watch: ParkWatch, start: float) -> dict:
        """What is known without a verdict: where the vCPUs are, what the console said."""
        return {"vcpus": watch.last_positions(), "console_marks": dict(self.marks_since(start))}

    def marks_since(self, start: float):
        for key, value in self.marks.items():
            yield key, round(value - start, 3)

    def _since(self, start: float) -> float:
        return round(time.monotonic() - start, 3)

    def reset(self, start: float) -> Finding:
        """QEMU ended after the panic: a reset (exit 0 under -no-reboot) is a finding; QEMU
        killed from outside or failing is not, and is the guest-gone infrastructure error."""
        if self.machine.proc is None or self.machine.proc.returncode != 0:
            raise self.link.guest_gone()
        return Finding(Outcome.GUEST_RESET, {"qemu": self.machine.death_reason(),
                                     "since_panic": self._since(start)})

    def capture_booted(self, hello: dict, release: str, table: SegmentTable,
                        identity: IdentityWatch | None = None) -> Finding:
        """The capture kernel said hello: a healthy capture only if its dump is the
        crashed kernel's memory (dump_check.py); otherwise dump-mismatch, naming what differed.
        Which kernel said it: this load's token in its /proc/cmdline, and identity.py's signals."""
        identity = identity or IdentityWatch(self.token)
        said = identify.confirm_capture(self, identity, identity.token_vote("hello-cmdline", hello.get("cmdline")),
                                        identity.console_vote(), identity.unended_vote())
        vmcore = check_vmcore(hello.get("vmcore_size"), hello.get("vmcore_head"), release)
        evidence = {"capture_release": hello.get("release"), "capture_cmdline": hello.get("cmdline"),
                    "helper_role": hello.get("role"), "capture_cpus": hello.get("cpus"),
                    "vmcore": vmcore, "identity": said}
        if not vmcore["ok"] or not self.primary:
            return Finding(Outcome.CAPTURE_BOOTED, evidence)
        dump, attachments = self.check_dump(bytes.fromhex(hello["vmcore_head"]), table)
        evidence["dump"] = dump
        if self.save_vmcore_to is not None:
            evidence["saved_vmcore"] = saved = capture_dump.save_vmcore(self.link, self.save_vmcore_to, self.timings)
            if saved.get("file") == VMCORE:
                saved["drgn"] = check_saved(self.save_vmcore_to, self.panic_lines, dump.get("cpus") or {})
                saved["problems"] += saved["drgn"]["problems"]
        return Finding(Outcome.CAPTURE_BOOTED if dump["ok"] else dump_check.outcome(dump), evidence, attachments)

    def check_dump(self, head: bytes, table: SegmentTable) -> tuple[dict, dict[str, str]]:
        """The dump the capture kernel serves against what the lab recorded of the crashed
        kernel (capture_dump.check_dump), with the hot-added DIMMs' files open meanwhile."""
        hot = [GuestMemory(path, address) for address, path in self.hot_memory_files]
        try:
            headers = read_headers(self.memory, table)
            facts = dump_check.DumpFacts(head, self.primary, self.memory, self.panic_lines,
                                         seed=random.randrange(1 << 32),
                                         hot_added=[(m.base, m.end) for m in hot], hot_memory=hot,
                                         low_memory=self.low_memory, headers=headers and headers[1],
                                         no_reader=dump_check.no_reader(self.arch.name, self.arch.debian_arch),
                                         online=self.cpus.online if self.cpus else None)
            dump = capture_dump.check_dump(self.link, facts, self.symbols_cache, self.timings)
        finally:
            for region in hot:
                region.close()
        if self.cpus and self.cpus.samples:
            dump["cpus"]["qmp_rips"] = dump_cpus.name_vcpus(
                facts.symbols, {vcpu: state.rip for vcpu, state in self.cpus.samples[-1].items()})
        return dump, {"dump-dmesg.txt": dump_check.dmesg_text(facts)}

    def finish(self, start: float, finding: Finding) -> Finding:
        self.timings["panic_to_verdict"] = self._since(start)
        if cause := causes.classify(finding.outcome, finding.evidence, self.tool_output, self.arch.name):
            finding.evidence["cause"] = cause
        if self.purgatory_line:
            finding.evidence["purgatory_console"] = purgatory_report(self.purgatory_line)
        if self.cpus:
            finding.evidence["cpus"] = self.cpus.evidence(finding.evidence)
            finding.attachments.setdefault("registers.txt", self.cpus.last_registers)
        self.phase = "judged"
        self.progress.say(f"{finding.outcome} after {self.timings['panic_to_verdict']:.1f} s")
        return finding
