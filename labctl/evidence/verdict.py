"""From evidence to an outcome, and from outcome and expectation to pass or fail.

Pure functions over recorded data (register dumps, control messages, guest
bytes), so that every rule here is tested on recorded transcripts without a
guest.  An outcome is only ever declared on positive evidence:

- capture-booted: the capture kernel's helper said hello with role=capture and
  its /proc/vmcore is the crashed kernel's memory (dump_check.py);
- dump-mismatch: the capture kernel booted, but its dump differs from the RAM
  file (a PT_LOAD's range, a sampled page) or lacks the console's panic lines;
- purgatory-refused: a vCPU sits on a jump-to-self inside the purgatory
  segment, the same RIP in at least two samples;
- load-rejected: kexec_file_load returned an error (errno recorded);
- load-accepted: the load succeeded and the scenario stops there (trigger none);
- panic-halted: the crashed kernel printed the end of its panic, which panic()
  only reaches when no capture kernel took over;
- capture-panicked: the capture kernel started (its banner) and then panicked;
- capture-damaged: the capture kernel booted, but the initramfs it unpacked is not
  the one the lab loaded (its init's SHA-256 check names the files that differ);
- capture-halted: after the panic a vCPU sits, the same RIP in two samples,
  inside the crashkernel reservation (not in purgatory) on a jump-to-self or
  just past a `hlt` with interrupts off: purgatory went on into a capture
  kernel that stopped for good (a decompressor's error() halts like that);
- rebooted: after a kexec reboot, the new kernel's helper said hello and both its
  /proc/cmdline and the console's `Kernel command line:` carry the run's token
  (reboot.py);
- guest-reset: QEMU exited after the panic (the guest rebooted or powered
  off; the lab runs QEMU with -no-reboot);
- hang: none of the above before the deadline.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass, field

from labctl.config.arch import HOST, Arch
from labctl.config.cause_names import FAULT_LOOP
from labctl.evidence.causes import cause_problem
from labctl.evidence.identity import disagreement
from labctl.evidence.reboot import kexec_problem
from labctl.evidence.segments import SegmentTable
from labctl.evidence.smp import cpu_problem
from labctl.result import Outcome

CPU_HEADER = re.compile(r"^CPU#(\d+)", re.MULTILINE)
HLT_STATE = re.compile(r"\bHLT=(\d)")
RFLAGS = re.compile(r"\bRFL=([0-9a-fA-F]+)")
RFLAGS_IF = 0x200
HLT_OPCODE = 0xF4
FAULT_LOOP_SAMPLES = 3  # one pc held this long, unfetchable: a fault loop (ParkWatch.faulting)


def parse_registers(text: str, arch: Arch = HOST) -> dict[int, int]:
    """CPU index -> program counter (RIP, PC, pc) from HMP `info registers -a`."""
    return arch.parse_pcs(text)


def cpu_parts(text: str) -> dict[int, str]:
    """CPU index -> its part of an `info registers -a` dump."""
    headers = list(CPU_HEADER.finditer(text))
    if not headers:
        return {0: text}
    return {int(h[1]): text[h.end():headers[i + 1].start() if i + 1 < len(headers) else len(text)]
            for i, h in enumerate(headers)}


def parse_halted(text: str) -> set[int]:
    """CPUs halted with interrupts off: a `hlt` that only an NMI could end."""
    halted = set()
    for cpu, part in cpu_parts(text).items():
        hlt, flags = HLT_STATE.search(part), RFLAGS.search(part)
        if hlt and flags and hlt[1] == "1" and not int(flags[1], 16) & RFLAGS_IF:
            halted.add(cpu)
    return halted


def is_self_jump(code: bytes, arch: Arch = HOST) -> bool:
    """A branch to itself in the architecture's encoding (labctl/config/arch.py)."""
    return arch.is_self_branch(code)


@dataclass
class ParkWatch:
    """Accumulates program-counter samples and says when a vCPU is parked in purgatory."""

    table: SegmentTable
    arch: Arch = HOST
    samples: list[dict[int, int]] = field(default_factory=list)
    halted: set[int] = field(default_factory=set)  # at the last sample (parse_halted)

    def add(self, rips: dict[int, int], halted: set[int] | None = None) -> None:
        self.samples.append(rips)
        self.halted = halted or set()

    def parked(self, code_at) -> dict | None:
        """Evidence dict if a vCPU sat on a self-jump in purgatory in the last two samples."""
        purgatory = self.table.by_role("purgatory")
        if purgatory is None or len(self.samples) < 2:
            return None
        last, previous = self.samples[-1], self.samples[-2]
        for cpu, rip in sorted(last.items()):
            if previous.get(cpu) != rip or not purgatory.contains(rip):
                continue
            code = code_at(rip)
            if is_self_jump(code, self.arch):
                return {"cpu": cpu, "rip": hex(rip), "code": code.hex(),
                        "purgatory_offset": hex(rip - purgatory.mem),
                        "samples": len(self.samples), "segment": purgatory.to_json()}
        return None

    def stopped(self, code_at, region: tuple[int, int] | None) -> dict | None:
        """Evidence dict if a vCPU stopped for good inside the crashkernel reservation
        [start, end] outside purgatory: same RIP in the last two samples, on a
        jump-to-self or just past a `hlt` with interrupts off."""
        if not region or region[1] <= region[0] or len(self.samples) < 2:
            return None
        last, previous = self.samples[-1], self.samples[-2]
        purgatory = self.table.by_role("purgatory")
        for cpu, rip in sorted(last.items()):
            if previous.get(cpu) != rip or not region[0] <= rip <= region[1] \
                    or (purgatory and purgatory.contains(rip)):
                continue
            code = code_at(rip)
            if is_self_jump(code, self.arch):
                how = "jump-to-self"
            elif cpu in self.halted and code_at(rip - 1)[:1] == bytes([HLT_OPCODE]):
                how = "hlt with interrupts off"
            else:
                continue
            segment = self.table.containing(rip)
            return {"cpu": cpu, "rip": hex(rip), "how": how, "code": code.hex(),
                    "segment": segment.role if segment else None,
                    "segment_offset": hex(rip - segment.mem) if segment else None,
                    "crashkernel": [hex(region[0]), hex(region[1])], "samples": len(self.samples)}
        return None

    def faulting(self, code_at, translate) -> dict | None:
        """Evidence dict if a vCPU re-takes a fault for good: the same pc in the last
        FAULT_LOOP_SAMPLES samples, no RAM at that address and no mapping for it through the
        vCPU's own MMU (translate(cpu, pc): QEMU's gva2gpa, None when it cannot).  Nothing
        runs there: the fetch faults, and so does the fetch of the exception vector it goes
        to.  The crashed kernel's vectors are mapped while its MMU is on; after a panic only
        the kexec path switches the MMU off and jumps (arm64 cpu_soft_restart() in
        arch/arm64/kernel/cpu-reset.S, entered from machine_kexec()), leaving VBAR_EL1 at the
        old kernel's virtual vectors: the code it jumped to faulted at once."""
        if len(self.samples) < FAULT_LOOP_SAMPLES:
            return None
        recent = self.samples[-FAULT_LOOP_SAMPLES:]
        for cpu, pc in sorted(recent[-1].items()):
            if any(sample.get(cpu) != pc for sample in recent) or code_at(pc):
                continue
            if translate(cpu, pc) is not None:
                continue
            return {"cpu": cpu, "pc": hex(pc), "samples": len(self.samples),
                    "how": FAULT_LOOP, "detail": "no RAM at its pc and its MMU maps none there"}
        return None

    def last_positions(self) -> list[dict]:
        """Where each vCPU was at the last sample, with the segment it falls in."""
        if not self.samples:
            return []
        out = []
        for cpu, rip in sorted(self.samples[-1].items()):
            seg = self.table.containing(rip)
            out.append({"cpu": cpu, "rip": hex(rip), "segment": seg.role if seg else None})
        return out


def _vmcore_problem(evidence: dict) -> str | None:
    vmcore = evidence.get("vmcore") or {}
    if vmcore.get("ok"):
        return None
    return "; ".join(vmcore.get("problems") or ["no vmcore facts"])


# What a purgatory carrying guests/kernels/patches/0001-x86-purgatory-report-the-digest-
# result-on-COM1.patch prints on COM1 before it parks or jumps on.
PURGATORY_REPORT = re.compile(r"purgatory: sha256 digest (ok|mismatch)[^\r\n]*\r?\n")  # whole line
DIGEST_RESULT = re.compile(r"sha256 digest (ok|mismatch)")
GOES_ON = re.compile(r"\b(not )?booting the next kernel")


def purgatory_report(line: str) -> dict:
    """An instrumented purgatory's COM1 line: the digest result and whether it goes on."""
    digest, goes_on = DIGEST_RESULT.search(line), GOES_ON.search(line)
    return {"line": line.strip(), "digest": digest[1] if digest else None,
            "boots_next_kernel": goes_on is not None and not goes_on[1]}


def console_contradiction(outcome: str, evidence: dict) -> str | None:
    """Purgatory's own report is extra evidence: it must agree with what the vCPU did."""
    report = evidence.get("purgatory_console")
    if not report:
        return None
    if outcome == Outcome.PURGATORY_REFUSED and report["boots_next_kernel"]:
        return f"a vCPU is parked in purgatory, but purgatory said on COM1: {report['line']!r}"
    if outcome in (Outcome.CAPTURE_BOOTED, Outcome.REBOOTED) and not report["boots_next_kernel"]:
        return f"the next kernel booted, but purgatory said on COM1: {report['line']!r}"
    return None


def judge(expected: str, outcome: str, evidence: dict, expected_errno: str | None = None,
          recovery: dict | None = None, expected_cause: str | None = None) -> tuple[bool, str]:
    """(passed, one-line reason) for an outcome against the scenario's expectation.

    expected_errno names the errno a rejection must carry (e.g. "ENOEXEC");
    recovery is the follow-up intact crash of a then_intact scenario, which
    must boot the capture kernel with a sane vmcore in the same guest; expected_cause
    is the cause a failure outcome must have (causes.py).
    """
    if outcome != expected:
        report = evidence.get("purgatory_console")
        problems = (evidence.get("dump") or {}).get("problems") if outcome == Outcome.DUMP_MISMATCH else None
        return False, f"expected {expected}, got {outcome}" + \
            (f": {'; '.join(problems[:3])}" if problems else "") + \
            (f" (purgatory said on COM1: {report['line']!r})" if report else "") + \
            (f" (and the identity signals disagree: {problem})" if (problem := disagreement(evidence)) else "")
    if problem := disagreement(evidence):
        return False, f"{outcome} as expected, but the identity signals disagree: {problem}"
    if problem := cause_problem(expected_cause, evidence):
        return False, f"{outcome} as expected, but {problem}"
    if problem := console_contradiction(outcome, evidence):
        return False, f"{outcome} as expected, but the evidence disagrees: {problem}"
    if problem := cpu_problem(evidence):
        return False, f"{outcome} as expected, but the CPUs disagree: {problem}"
    if problem := kexec_problem(outcome, evidence):
        return False, f"{outcome} as expected, but the evidence disagrees: {problem}"
    if outcome == Outcome.CAPTURE_BOOTED and (problem := _vmcore_problem(evidence)):
        return False, f"capture kernel booted but /proc/vmcore is not sane: {problem}"
    if expected_errno:
        got = errno.errorcode.get(evidence.get("errno") or 0, "no errno")
        if got != expected_errno:
            return False, f"{outcome} as expected, but with {got} instead of {expected_errno}"
    if recovery is not None:
        if recovery.get("outcome") != Outcome.CAPTURE_BOOTED:
            return False, f"{outcome} as expected, but the guest was not healthy afterwards: " \
                          f"the follow-up intact crash gave {recovery.get('outcome')}"
        if problem := disagreement(recovery):
            return False, f"{outcome} as expected, but in the follow-up intact crash the identity " \
                          f"signals disagree: {problem}"
        if problem := _vmcore_problem(recovery):
            return False, f"{outcome} as expected, but after it /proc/vmcore is not sane: {problem}"
        return True, f"{outcome} as expected{' (' + expected_errno + ')' if expected_errno else ''}, " \
                     "then an intact crash booted the capture kernel"
    if outcome == Outcome.DUMP_MISMATCH:  # say what the lab found wrong with the dump
        problems = (evidence.get("dump") or {}).get("problems") or []
        return True, f"{outcome} as expected" + (f" ({expected_cause})" if expected_cause else "") + \
            f": {'; '.join(problems[:2])}" + _unchecked(evidence)
    if expected_cause:
        return True, f"{outcome} as expected ({expected_cause})" + _unchecked(evidence)
    return True, f"{outcome} as expected" + (f" ({expected_errno})" if expected_errno else "") + \
        _unchecked(evidence)


def _unchecked(evidence: dict) -> str:
    """What the dump check could not check on this run, said in the PASS line."""
    unchecked = (evidence.get("dump") or {}).get("unchecked") or []
    return f"; not checked: {'; '.join(unchecked)}" if unchecked else ""
