"""userland: debian — the distribution's own kdump stack on a Debian 12 guest.

The guest boots the catalogue kernel from the cached root disk (guest/rootfs.py, opened
snapshot=on: no run changes it) with a second small disk of its own at /var/crash.  Under
systemd, kdump-tools.service loads the capture kernel (`kdump-config load`: kexec -p,
kexec_load by default, kexec_file_load with `-s` in KDUMP_KEXEC_ARGS, set per run from
the scenario's load.method; `-d` makes kexec-tools print its segments).  The lab's unit
then reports on ttyS1: /sys/kernel/kexec_crash_loaded, the unit's state, the kexec command
kdump-config ran, its output and the kernel's kexec lines (the segment table), and waits.

The lab may corrupt a segment through the RAM file, then asks for the crash (sysrq c).
Intact: the capture kernel boots the same root disk into kdump-tools-dump.service, which
runs makedumpfile to /var/crash/<stamp>/ and reboots (QEMU runs -no-reboot, so the reboot
ends it); the host reads the /var/crash disk (debugfs) and checks the dump against the RAM
file's pages hashed when the capture kernel started (evidence/distro_dump.py).
Corrupted: purgatory refuses (a vCPU parked on its jump-to-self, as for the lab's own
loads) and the /var/crash disk holds no dump directory.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from labctl.errors import InfraError
from labctl.evidence import distro_dump
from labctl.evidence.applicability import UNMET, Check, Need, NotApplicable
from labctl.evidence.identity import CAPTURE, IdentityWatch, RamLog, confirm, new_token
from labctl.evidence.kdump_file import KdumpFormatError, open_kdump
from labctl.evidence.segments import SegmentTable, parse_segment_table
from labctl.evidence.verdict import ParkWatch
from labctl.guest import rootfs
from labctl.guest.accel import Accel
from labctl.guest.machine import Machine, MachineSpec
from labctl.pair import identify
from labctl.pair.context import PairContext
from labctl.pair.dump_open import check_saved
from labctl.pair.steps import (
    END_OF_PANIC,
    LINUX_BANNER,
    PANIC_LINE,
    RAM_SCAN_QUIET_SECONDS,
    RAM_SCAN_SECONDS,
    SYSRQ_LINE,
    Finding,
    Session,
    opened_session,
)
from labctl.pair.vmcore_save import rebuild
from labctl.result import Outcome

CRASH_DISK_MIB = 512
# Backstops only (a systemd boot under TCG takes tens of seconds; the capture boot, the
# dump of a 1 GiB guest and the reboot a minute or more); outcomes end the waits.
BOOT_SECONDS = 600.0
CAPTURE_SECONDS = 900.0
SAMPLE_SECONDS = 0.25
MAX_LOG_LINES = 2000
STAMP_DIR = re.compile(r"^\d{12}$")  # kdump-tools' /var/crash/<YYYYMMDDHHMM>
SAVED_VMCORE = re.compile(r"saved vmcore in (/\S+)[^\r\n]*\r?\n")
SAVED_DMESG = re.compile(r"saved dmesg content in [^\r\n]*\r?\n")
MAKEDUMPFILE = re.compile(r"running makedumpfile [^\r\n]*\r?\n")
# initramfs-tools' local script when the root disk never shows up (then it halts: panic=0)
NO_ROOT = re.compile(r"(Gave up waiting for root file system device|ALERT!\s+\S+ does not exist)[^\r\n]*\r?\n")
KDUMP_FAILED = re.compile(r"kdump-tools: (?:makedumpfile failed|failed to save)[^\r\n]*\r?\n")


# Where the segments are comes from kexec -d (kexec_load) or from the kernel's kexec_file
# lines (kexec_file_load).  Since 6.7 the kernel prints those only for a load with
# KEXEC_FILE_DEBUG (include/linux/kexec.h: kexec_dprintk; 6.1 used pr_debug, which the
# guest's dynamic debug turns on), and Debian 12's kexec-tools 2.0.25 does not pass it.
NO_SEGMENT_TABLE = ("kdump-tools loaded the capture kernel, but nothing said where its segments are: "
                    "this kernel prints kexec_file_load's segment table only under KEXEC_FILE_DEBUG, "
                    "which Debian 12's kexec-tools (2.0.25, kexec -s -d) does not pass, so the lab "
                    "cannot place the corruption (kexec_load, or a kernel before 6.7, can)")


def make_crash_disk(path: Path) -> None:
    """An empty ext2 file system for /var/crash (no journal: the guest syncs, then
    `reboot -f`, and the host reads the disk with debugfs, which replays no journal)."""
    with open(path, "wb") as f:
        f.truncate(CRASH_DISK_MIB << 20)
    proc = subprocess.run(["mke2fs", "-q", "-t", "ext2", "-L", "kexec-lab-crash", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise InfraError(f"mke2fs for the /var/crash disk failed: {proc.stderr.strip()[-300:]}")


def debugfs(disk: Path, request: str) -> str:
    proc = subprocess.run(["debugfs", "-R", request, str(disk)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InfraError(f"debugfs '{request}' on {disk} failed: {proc.stderr.strip()[-300:]}")
    return proc.stdout


def crash_dirs(disk: Path) -> list[str]:
    """kdump-tools' stamp directories on the /var/crash disk (`ls -p`: /ino/mode/uid/gid/name/size/)."""
    names = [line.strip("/").split("/")[4] for line in debugfs(disk, "ls -p /").splitlines()
             if line.count("/") >= 6]
    return sorted(n for n in names if STAMP_DIR.match(n))


def copy_out(disk: Path, stamp: str, dest: Path) -> dict[str, Path]:
    """The files of one stamp directory, copied out of the disk image."""
    dest.mkdir(parents=True, exist_ok=True)
    debugfs(disk, f"rdump /{stamp} {dest}")
    return {p.name: p for p in (dest / stamp).iterdir() if p.is_file()}


def machine_spec(pair: PairContext, accel: Accel, image: rootfs.RootfsImage, crash_disk: Path,
                 token: str) -> MachineSpec:
    """The Debian guest: its root disk (snapshot=on), the /var/crash disk, and on the command
    line the kexec call kdump-tools is to use and this run's token, which kexec-lab-setup
    hands to kdump-tools for the capture kernel's command line (labctl_run=, identity.py)."""
    m = pair.lab.machine
    kexec = "file" if pair.scenario.load.method == "kexec_file_load" else "load"
    cmdline = " ".join(filter(None, [*pair.arch.kernel_params, "root=/dev/vda", "rw",
                                     f"crashkernel={m.crashkernel_mib}M", "panic=0", m.cmdline,
                                     pair.scenario.boot_cmdline, f"kexec_lab.kexec={kexec}",
                                     f"kexec_lab.capture_token={token}"]))
    return MachineSpec(kernel=pair.kernel.bzimage, initrd=image.initrd, cmdline=cmdline,
                       accel=accel.name, machine_type=m.type, memory_mib=m.memory_mib, smp=1,
                       tcg_threads=m.tcg_threads, arch=pair.arch.name,
                       drives=(f"file={image.disk},format=raw,if=virtio,snapshot=on",
                               f"file={crash_disk},format=raw,if=virtio"))


def run(pair: PairContext, accel: Accel, out: Path, t0: float) -> Finding:
    """Build or find the image, boot, let kdump-tools load, crash, judge."""
    pair.progress.say("preparing the Debian root disk")
    start = time.monotonic()
    image = rootfs.obtain(pair.kernel, pair.lab.cache_dir, pair.progress.say)
    manifest = image.manifest
    pair.evidence["rootfs"] = {"directory": str(image.directory), "kernel": manifest["kernel"],
                               "versions": manifest["versions"],
                               "disk_bytes_allocated": manifest["disk_bytes_allocated"],
                               "build_seconds": manifest["build_seconds"],
                               "obtained_in": round(time.monotonic() - start, 1)}
    disk = out / "var-crash.img"
    make_crash_disk(disk)
    pair.progress.say("booting the Debian guest (systemd; kdump-tools.service loads at boot)")
    try:
        token = new_token()
        spec = machine_spec(pair, accel, image, disk, token)
        with Machine(spec, out / "qemu.log") as machine, \
                opened_session(machine, out, t0, pair.lab.timeouts, pair.progress) as session:
            pair.session, session.token = session, token
            flow = DistroFlow(pair, session)
            finding = flow.steps()
        return flow.judge_disk(finding, disk, out)
    finally:
        disk.unlink(missing_ok=True)


class DistroFlow:
    """The steps on the running Debian guest."""

    def __init__(self, pair: PairContext, session: Session):
        self.pair = pair
        self.session = session
        self.log: list[dict] = []  # the report unit's log lines
        self.truth: dict[int, int] | None = None  # page hashes when the capture kernel started
        self.iomem: dict = {}
        self.saved: str | None = None
        self.identity: IdentityWatch | None = None  # which kernel printed what (identity.py)
        self.where: list = []  # where the vCPUs ran when the capture kernel's log was found in RAM

    def steps(self) -> Finding:
        report = self.boot()
        loaded = self.loaded(report)
        if report.get("kexec_crash_loaded") != 1:
            return Finding(Outcome.LOAD_REJECTED, {"kdump": loaded})
        table = parse_segment_table([m["line"] for m in self.log])
        self.pair.evidence["load"]["segments"] = table.to_json()
        if not table.segments and self.pair.scenario.corrupt:
            need = Need("corrupt", "the loaded segment table in the kernel's log, to place the corruption")
            unmet = Check(need, UNMET, NO_SEGMENT_TABLE)
            raise NotApplicable(unmet, [unmet])  # only the booted kernel tells: a skip with the reason
        if self.pair.scenario.corrupt:
            self.pair.evidence["corruption"] = self.session.corrupt(table, self.pair.scenario.corrupt)
        self.trigger()
        return self.observe(table)

    def boot(self) -> dict:
        """Until the lab's unit reports (after kdump-tools.service ran)."""
        s = self.session
        s.phase, start = "booting", time.monotonic()
        while time.monotonic() - start < BOOT_SECONDS:
            messages, hits = s.link.events({"panic": PANIC_LINE, "no_root": NO_ROOT}, strict=False)
            if hits:
                raise InfraError(f"the Debian guest failed to boot: {hits[0][1].strip()} (see serial.log)")
            for message in messages:
                if message["type"] == "log" and len(self.log) < MAX_LOG_LINES:
                    self.log.append(message)
                elif message["type"] == "kdump":
                    s.timings["boot_to_kdump_report"] = round(time.monotonic() - start, 3)
                    s.progress.say(f"kdump-tools: kexec_crash_loaded={message.get('kexec_crash_loaded')} "
                                   f"after {s.timings['boot_to_kdump_report']:.1f} s")
                    return message
            if not s.machine.alive():
                raise InfraError(f"{s.machine.death_reason()} while the Debian guest booted")
            s.progress.tick("systemd and kdump-tools.service", start)
        raise InfraError(f"the Debian guest's kdump report did not come within {BOOT_SECONDS:.0f} s "
                         "(see serial.log)")

    def lines(self, source: str) -> list[str]:
        return [m["line"] for m in self.log if m.get("source") == source and isinstance(m.get("line"), str)]

    def loaded(self, report: dict) -> dict:
        """What kdump-tools did and which kexec call it used, from two sources: the command
        kdump-config recorded (`-s`: kexec_file_load) and who printed the segment table
        (the kernel's kexec_file lines, or kexec-tools' `kexec_load: entry`)."""
        command = " ".join(self.lines("kexec_cmd"))
        call = distro_dump.kexec_call(command, self.lines("kdump-tools"), self.lines("dmesg"))
        by_command, by_log = call["by_command"], call["by_log"]
        self.iomem = distro_dump.parse_iomem(self.lines("iomem"))
        self.session.primary = {"crashkernel": self.iomem["crashkernel"]}
        facts = {"kexec_crash_loaded": report.get("kexec_crash_loaded"), "unit": report.get("unit"),
                 "kexec_crash_size": report.get("kexec_crash_size"), "release": report.get("release"),
                 "kexec_cmd": command, "kexec_call_by_command": by_command, "kexec_call_by_log": by_log,
                 "capture_token": self.session.token,
                 "kdump_tools_output": self.lines("kdump-tools")[-12:],
                 "crashkernel": [hex(x) for x in self.iomem["crashkernel"] or []]}
        self.pair.evidence["load"] = {"method": self.pair.scenario.load.method, "by": "kdump-tools", **facts}
        wanted = self.pair.scenario.load.method
        if report.get("kexec_crash_loaded") == 1 and wanted not in (by_command, by_log):
            raise InfraError(f"the scenario asked kdump-tools for {wanted}, but it used {by_command} "
                             f"(kexec command: {command!r})")
        return facts

    def trigger(self) -> None:
        s = self.session
        s.phase = "panicking"
        s.progress.say("crashing the Debian guest (sysrq c)")
        s.console.forget()
        s.marks["trigger"] = time.monotonic()
        s.control.send("crash")

    def observe(self, table: SegmentTable) -> Finding:
        """Purgatory parked, or the capture boot saving the dump and rebooting.  Which kernel
        printed an end of panic, and whether a capture kernel ran before a reset, rest on the
        signals of identity.py (this run's token in the capture kernel's command line, on the
        console or in its own log in the reservation, where the vCPUs run), as for the lab's
        own loads, never on a `Linux version` banner alone."""
        s = self.session
        s.phase, start = "observing", s.marks["trigger"]
        self.identity = identity = IdentityWatch(s.token, RamLog(s.token, s.primary.get("crashkernel")))
        watch, registers, next_sample, next_scan = ParkWatch(table, s.arch), "", start + SAMPLE_SECONDS, 0.0
        patterns = {"panic": PANIC_LINE, "sysrq": SYSRQ_LINE, "banner": LINUX_BANNER,
                    "end": END_OF_PANIC, "makedumpfile": MAKEDUMPFILE, "dmesg_saved": SAVED_DMESG,
                    "saved": SAVED_VMCORE, "failed": KDUMP_FAILED, **IdentityWatch.patterns}
        while time.monotonic() - start < CAPTURE_SECONDS:
            _, hits = s.link.events(patterns, strict=False)
            identity.console(hits)
            self.mark(hits, start)
            if ended := [line for name, line in hits if name == "end"]:
                outcome, said = identify.console_end(s, identity, ended[0])
                return Finding(outcome, {"console": ended[0].strip(), "identity": said})
            if not s.machine.alive():
                return self.reset(start)
            now = time.monotonic()
            if self.truth is None and now >= next_sample:
                if (sample := s.link.sample(watch)) is None:  # QEMU ended between two checks
                    return self.reset(start)
                registers = sample
                next_sample = now + SAMPLE_SECONDS
                if parked := watch.parked(s.link.code_at):
                    s.timings["panic_to_verdict"] = round(now - start, 3)
                    return Finding(Outcome.PURGATORY_REFUSED, {"parked": parked}, {"registers.txt": registers})
            if now >= next_scan and now - s.console.last_output >= RAM_SCAN_QUIET_SECONDS and identity.needs_ram():
                next_scan = now + RAM_SCAN_SECONDS  # a quiet capture kernel: its own log says it runs
                ended_in_ram, where = identify.scan_ram(s, identity)
                if ended_in_ram:
                    claim, said = ended_in_ram
                    return Finding(identify.ended(claim), said)
                if identity.ram_votes() and not self.where:  # and where the vCPUs ran then
                    self.where = where
                    self.capture_started(start, "its own log in the reservation")
            s.progress.tick("the capture boot, the dump and the reboot (or a parked vCPU)", start)
        return Finding(Outcome.HANG, {"waited": CAPTURE_SECONDS, "vcpus": watch.last_positions(),
                              "console_marks": sorted(k for k in s.marks)}, {"registers.txt": registers})

    def mark(self, hits: list[tuple[str, str]], start: float) -> None:
        """Console milestones as timings; the capture kernel's start once its command line
        with this run's token is on the console."""
        s = self.session
        for name, line in hits:
            if name in ("panic", "sysrq") and self.truth is None:
                s.panic_lines.append(line.strip())
            if name == "saved" and self.truth is not None:
                self.saved = re.sub(r"[^\w/.-]", "", line.split("saved vmcore in", 1)[1].split()[0])
            if name == "cmdline" and (vote := self.identity and self.identity.console_vote()) \
                    and vote.says == CAPTURE:
                self.capture_started(start, "its command line on the console")
            key = {"banner": "capture_banner", "makedumpfile": "makedumpfile", "saved": "vmcore_saved",
                   "dmesg_saved": "dmesg_saved", "failed": "kdump_failed"}.get(name)
            if key and key not in s.marks:
                s.marks[key] = time.monotonic()
                s.timings[f"panic_to_{key}"] = round(s.marks[key] - start, 3)
                s.progress.say(f"{key.replace('_', ' ')} after {s.timings[f'panic_to_{key}']:.1f} s")

    def capture_started(self, start: float, seen: str) -> None:
        """The capture kernel runs (this run's token, seen as `seen`): hash the crashed kernel's
        RAM now, the truth its dump is checked against."""
        if self.truth is not None:
            return
        s = self.session
        s.marks["capture_started"] = hashed = time.monotonic()
        s.timings["panic_to_capture_started"] = round(hashed - start, 3)
        self.truth = distro_dump.hash_ram(s.memory, self.iomem)
        s.timings["hash_ram"] = round(time.monotonic() - hashed, 3)
        s.progress.say(f"capture kernel started ({seen}); hashed {len(self.truth)} pages of the "
                       f"crashed kernel's RAM in {s.timings['hash_ram']:.1f} s")

    def reset(self, start: float) -> Finding:
        """QEMU ended: kdump-tools' `reboot -f` after saving (under -no-reboot), or not.  A
        capture boot is claimed on identity.py's signals (its log read from the RAM file
        once more, which outlives QEMU until the run ends, and where the vCPUs ran when that
        log was first found); the dump on /var/crash is judged after (judge_disk)."""
        s = self.session
        code = s.machine.proc.returncode if s.machine.proc else None
        if code != 0:
            raise InfraError(f"{s.machine.death_reason()} after the crash")
        s.timings["panic_to_reboot"] = round(time.monotonic() - start, 3)
        evidence = {"qemu": s.machine.death_reason(), "saved_line": self.saved,
                    "console_marks": sorted(s.marks)}
        identity = self.identity or IdentityWatch(s.token)
        if identity.ram is not None and identity.needs_ram():
            identity.ram.scan(s.memory.find, s.memory.read, s.memory.written_ranges())
        said = confirm(CAPTURE, [identity.console_vote(), identity.unended_vote(), *identity.ram_votes(),
                                 *self.where])
        if any(v["says"] == CAPTURE for v in said["votes"]):
            return Finding(Outcome.CAPTURE_BOOTED, {**evidence, "identity": said})
        return Finding(Outcome.GUEST_RESET, {**evidence, "identity_votes": said["votes"]})

    def judge_disk(self, finding: Finding, disk: Path, out: Path) -> Finding:
        """What kdump-tools left on /var/crash, checked against the truth."""
        start = time.monotonic()
        stamps = crash_dirs(disk)
        finding.evidence["var_crash"] = {"dump_dirs": stamps}
        if finding.outcome != Outcome.CAPTURE_BOOTED:
            if stamps:  # something was saved: a capture kernel did run
                finding.evidence["var_crash"]["problem"] = "a dump was saved although no capture boot was seen"
                return Finding(Outcome.CAPTURE_BOOTED, {**finding.evidence, "vmcore": {
                    "ok": False, "problems": [f"dump saved in {stamps} without a capture banner"]}})
            return finding
        if not stamps:
            finding.evidence["vmcore"] = {"ok": False, "problems": ["kdump-tools saved nothing in /var/crash"]}
            return finding
        files = copy_out(disk, stamps[-1], out / "var-crash")
        dump = self.check_dump(files, out)
        self.session.timings["dump_check"] = round(time.monotonic() - start, 3)
        finding.evidence["dump"] = dump
        if dump["problems"]:
            return Finding(Outcome.DUMP_MISMATCH, finding.evidence, finding.attachments)
        finding.evidence["vmcore"] = {"ok": True, "problems": []}
        return finding

    def check_dump(self, files: dict[str, Path], out: Path) -> dict:
        flat = next((p for n, p in files.items() if n.startswith("dump.")), None)
        dmesg_file = next((p for n, p in files.items() if n.startswith("dmesg.")), None)
        evidence: dict = {"files": {n: p.stat().st_size for n, p in files.items()}}
        problems: list[str] = []
        dmesg = dmesg_file.read_text(errors="replace") if dmesg_file else None
        evidence["log"] = distro_dump.check_log(dmesg, self.session.panic_lines)
        problems += evidence["log"]["problems"]
        if flat is None:
            return {**evidence, "problems": problems + ["kdump-tools saved no dump file"]}
        rebuilt = rebuild(flat, out / "vmcore")  # makedumpfile -F: flattened; -R undoes it
        evidence["rebuild"] = rebuilt
        if rebuilt.get("problems") or "size" not in rebuilt:
            return {**evidence, "problems": problems + (rebuilt.get("problems") or [rebuilt.get("note", "")])}
        try:
            dump = open_kdump(out / "vmcore")
        except KdumpFormatError as exc:
            return {**evidence, "problems": problems + [str(exc)]}
        evidence["release"] = distro_dump.check_release(dump, self.pair.kernel.release)
        problems += evidence["release"]["problems"]
        if self.truth is None:
            problems.append("the RAM was not hashed at the capture kernel's start")
        else:
            evidence["pages"] = distro_dump.check_pages(dump, self.truth)
            problems += evidence["pages"]["problems"]
        # opened as users open it: drgn, kallsyms from VMCOREINFO, the crash-path PRSTATUS notes
        task = evidence["log"].get("crashed_task") or {}
        evidence["drgn"] = check_saved(out, self.session.panic_lines, {"log": {"pid": task.get("pid")}})
        problems += evidence["drgn"]["problems"]
        if not self.pair.save_vmcore:  # --save-vmcore keeps it; kdump-tools' dmesg file stays
            (out / "vmcore").unlink()
        return {**evidence, "problems": problems}
