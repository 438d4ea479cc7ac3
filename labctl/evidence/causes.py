"""Why a capture kernel failed: the cause of a failure outcome, named from its evidence.

A scenario that expects a failure class states the cause it expects (`cause:`),
and a failure with another cause fails the pair: a dump that differs because
the lab's own reply timed out is not the PT_LOAD offset the scenario is about.
The lab's own timeouts are never a cause (LAB_TIMEOUT, which no scenario may
expect).  Every cause is read from what the run recorded:

- dump-mismatch (dump_check's problems, the load's kexec-tools output):
  pt-load-offset: a sampled page of the dump is another page of the crashed
  kernel's RAM (its PT_LOAD's p_offset points elsewhere: fs/proc/vmcore.c
  serves p_offset); page-content: a sampled page matches no RAM page;
  page-unreadable: /proc/vmcore could not read a page; opensbi-region: that
  page is riscv64 OpenSBI's firmware (the first 2 MiB of RAM, kept from
  S-mode); pt-load-range: a PT_LOAD is not the crashed kernel's System RAM, or
  its RAM is missing; missing-symbol: the dump's log could not be read and
  kexec-tools said it found no kernel symbol it needs (`Cannot get kernel _text
  symbol address`); dump-log: the dump's log could not be read or lacks the
  console's panic lines.  dump_check names the kind of each problem itself
  (its CAUSES: also hot-added-memory, low-memory, cpu-notes); these patterns
  read the problems of a dump check that did not.
- capture-panicked (the capture kernel's panic message, from the console or
  its log in RAM): no-root-fs, no-init, init-exited, out-of-memory, oops, other.
- capture-damaged (the capture init's line): initramfs-checksum (a file differs),
  initramfs-missing-file (a file is gone).
- capture-halted (where the vCPU stopped): <hlt|self-jump>-in-<segment>, the
  segment of the load it stopped in, or the reservation outside every segment;
  fault-loop where it re-takes a fault at an address nothing maps.
"""

from __future__ import annotations

import re

from labctl.config.cause_names import CAUSES, FAULT_LOOP, HALT_HOWS, LAB_TIMEOUT
from labctl.result import Outcome

RISCV_RAM_BASE = 0x8000_0000  # hw/riscv/virt.c VIRT_DRAM; OpenSBI keeps the first 2 MiB
OPENSBI_SIZE = 2 << 20

# (cause, pattern over one dump_check problem), first match wins
DUMP_PROBLEMS = (
    (LAB_TIMEOUT, re.compile(r"did not answer .* within")),
    ("pt-load-offset", re.compile(r"differs: .*\(the dump serves the RAM file's page at")),
    ("page-content", re.compile(r"page at paddr 0x[0-9a-f]+ differs")),
    ("page-unreadable", re.compile(r"could not be read at offset")),
    ("pt-load-range", re.compile(r"is not System RAM|is not in the dump|did not report its System RAM")),
    ("dump-log", re.compile(r"vmcore-dmesg|the log in the dump")),
)
UNREADABLE_PADDR = re.compile(r"could not be read at offset \S+ \(paddr (0x[0-9a-f]+)")
MISSING_SYMBOL = re.compile(r"(Cannot|Can't) get (the )?(kernel )?\S+ symbol|symbol .* not found", re.I)
PANIC_CAUSES = (
    ("no-root-fs", re.compile(r"VFS: Unable to mount root fs")),
    ("no-init", re.compile(r"No working init found|Requested init \S+ failed")),
    ("init-exited", re.compile(r"Attempted to kill init")),
    ("out-of-memory", re.compile(r"Out of memory|System is deadlocked on memory|out of memory", re.I)),
    ("oops", re.compile(r"Fatal exception|Oops")),
)


def _dump_causes(evidence: dict, tool_output: list[str], arch: str) -> list[str]:
    dump = evidence.get("dump") or {}
    problems = (dump.get("problems") or []) + ((evidence.get("vmcore") or {}).get("problems") or [])
    kinds = dump.get("causes") or [_problem_kind(problem) for problem in problems]
    found: list[str] = []
    for kind in kinds:
        cause = _refine(kind, problems, tool_output, arch)
        if cause not in found:
            found.append(cause)
    return found


def _problem_kind(problem: str) -> str:
    return next((c for c, pattern in DUMP_PROBLEMS if pattern.search(problem)), "page-content")


def _refine(kind: str, problems: list[str], tool_output: list[str], arch: str) -> str:
    """A problem kind narrowed by what else the run recorded: an unreadable page that is
    riscv64's OpenSBI region, a dump log kexec-tools could not find its symbols for, or
    the capture helper's silence (the lab's own timeout, never a cause)."""
    if kind == "no-answer":
        return LAB_TIMEOUT
    if kind == "page-unreadable" and arch == "riscv64" and any(
            (m := UNREADABLE_PADDR.search(p)) and RISCV_RAM_BASE <= int(m[1], 16) < RISCV_RAM_BASE + OPENSBI_SIZE
            for p in problems):
        return "opensbi-region"
    if kind == "dump-log" and any(MISSING_SYMBOL.search(line) for line in tool_output):
        return "missing-symbol"
    return kind


def _panic_cause(evidence: dict) -> list[str]:
    said = evidence.get("console") or evidence.get("log_in_ram") or ""
    return [next((c for c, pattern in PANIC_CAUSES if pattern.search(said)), "other")]


def _damaged_cause(evidence: dict) -> list[str]:
    if "missing-reader" in ((evidence.get("dump") or {}).get("causes") or []):
        return ["missing-reader"]
    line = evidence.get("console") or ""
    return ["initramfs-missing-file" if re.search(r"open or read|No such file", line) else "initramfs-checksum"]


def _halted_cause(evidence: dict) -> list[str]:
    halted = evidence.get("halted") or {}
    if halted.get("how") == FAULT_LOOP:  # verdict.ParkWatch.faulting: no segment, nothing mapped
        return ["fault-loop"]
    how = HALT_HOWS.get(str(halted.get("how")), "hlt")
    return [f"{how}-in-{halted.get('segment') or 'reservation'}"]


def classify(outcome: str, evidence: dict, tool_output: list[str] | None = None,
             arch: str = "x86_64") -> dict | None:
    """The causes the evidence of a failure outcome shows (None for other outcomes).
    tool_output: what kexec-tools said while loading (kexec_load), arch: the guest's."""
    if outcome not in CAUSES:
        return None
    how = {Outcome.DUMP_MISMATCH: lambda: _dump_causes(evidence, tool_output or [], arch),
           Outcome.CAPTURE_PANICKED: lambda: _panic_cause(evidence),
           Outcome.CAPTURE_DAMAGED: lambda: _damaged_cause(evidence),
           Outcome.CAPTURE_HALTED: lambda: _halted_cause(evidence)}[Outcome(outcome)]
    return {"causes": how()}


def cause_problem(expected_cause: str | None, evidence: dict) -> str | None:
    """Why the cause seen is not the one expected (None: it is)."""
    if expected_cause is None:
        return None
    seen = (evidence.get("cause") or {}).get("causes") or []
    if LAB_TIMEOUT in seen:
        return "the lab's own reply timed out, which is never a cause"
    if expected_cause not in seen:
        return f"the cause is {', '.join(seen) or 'not known'}, not {expected_cause}"
    return None
