"""The dump checked against the truth: what /proc/vmcore serves vs the guest RAM file.

The crashed kernel's memory outside the crashkernel reservation is still in
the RAM file while the capture kernel runs, so the host holds the truth the
dump must serve.  The checks, each a function of DumpFacts that returns its
evidence with a "problems" list (add a check by appending to CHECKS):

- ranges: the PT_LOADs' physical ranges are the crashed kernel's System RAM
  (its /proc/iomem) minus the crashkernel reservation.  Below 1 MiB the dump
  may omit memory or serve a copy: x86 kexec_file_load leaves the low 1 MiB
  out (arch/x86/kernel/crash.c:elf_header_exclude_ranges) and hands it to the
  capture kernel as RAM (crash_setup_memmap_entries); kexec-tools serves it
  from its backup segment.
- pages: the first and last page of every PT_LOAD and some random ones (a
  recorded seed, chosen among pages that hold data, so that a shifted or
  misdirected mapping cannot hide behind zero pages), hashed by the capture
  helper from /proc/vmcore and by the host from the RAM file at the page's
  physical address (see below for where the truth is).
- sources: where the ELF core headers in guest RAM tell the capture kernel to
  serve each PT_LOAD from (p_offset) is its p_paddr, except kexec-tools' backup
  of low memory, which must lie in the reservation.
- log: the crashed kernel's log, read out of the dump by kexec-tools'
  vmcore-dmesg (from VMCOREINFO, no vmlinux), holds the panic lines the
  serial console showed.  fs/proc/vmcore.c takes each PT_LOAD's p_offset as
  the physical address to serve and checks it against nothing, so a wrong
  elfcorehdr shows up here and in the pages, not earlier.  A capture
  initramfs without its reader is damaged (capture-damaged), never "not
  checked"; only an architecture the lab has no reader for (declared in
  config/arch.py) leaves the log unchecked, and the result says so.
- cpus: the CPUs as the dump records them (dump_cpus.py).

Where each PT_LOAD's truth is: the RAM file at its physical address; a hot-added
DIMM's own backing file at the DIMM's address (pair/hotplug.py backs it with a file
for this); below 1 MiB, the RAM as it was at the trigger (the capture kernel runs
there afterwards: kexec-tools gives it 0-640K and serves the crashed kernel's copy
from its backup segment, so the dump must equal that snapshot).  Where the dump
serves a PT_LOAD from is read from the ELF core headers in guest RAM (each
PT_LOAD's p_offset there, fs/proc/vmcore.c), never assumed to be its p_paddr.

Every problem carries a cause (CAUSES), so that a scenario expecting one kind of
damage is not satisfied by another.
"""

from __future__ import annotations

import errno
import hashlib
import io
import random
import re
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from labctl.evidence import dump_cpus
from labctl.evidence.smp import parse_cpulist
from labctl.guest.memory import GuestMemory
from labctl.result import Outcome

PAGE = 4096
LOW_MEMORY_END = 1 << 20  # the capture kernel's own RAM below this (see module doc)
RANDOM_PAGES = 4  # per PT_LOAD, besides its first and last page
RANDOM_TRIES = 64  # candidates per random page before a page of zeros is accepted
ZERO_PAGE = bytes(PAGE)
DMESG_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")
# What a problem is about (the dump evidence's "causes"), for expectations that name one.
CAUSES = {
    "pt-load-range": "a PT_LOAD is not the crashed kernel's RAM, or RAM is missing from the dump",
    "pt-load-offset": "the ELF core headers tell the capture kernel to serve a PT_LOAD from "
                      "memory other than its physical address",
    "page-content": "a sampled page differs from the crashed kernel's memory",
    "hot-added-memory": "a sampled page of hot-added memory differs from the DIMM's",
    "low-memory": "a page below 1 MiB differs from what the crashed kernel had there at the panic",
    "page-unreadable": "/proc/vmcore could not serve a sampled page",
    "missing-reader": "the capture initramfs lacks the dump-log reader (vmcore-dmesg)",
    "dump-log": "the crashed kernel's log cannot be read out of the dump or lacks the panic",
    "cpu-notes": "the dump's per-CPU notes or the panicking CPU in its log are wrong",
    "no-answer": "the capture helper did not answer",
}


@dataclass(frozen=True)
class Load:
    """One PT_LOAD of /proc/vmcore as the capture kernel serves it."""

    index: int  # among the PT_LOADs, from 0
    offset: int  # where its bytes are in /proc/vmcore
    paddr: int  # the physical address it claims to hold
    size: int  # p_filesz
    vaddr: int

    @property
    def end(self) -> int:
        return self.paddr + self.size

    def name(self) -> str:
        return f"PT_LOAD {self.index} (paddr {self.paddr:#x}-{self.end:#x})"

    def to_json(self) -> dict:
        return {"index": self.index, "offset": hex(self.offset), "paddr": hex(self.paddr),
                "size": hex(self.size), "vaddr": hex(self.vaddr)}


@dataclass(frozen=True)
class Sample:
    """A page to hash on both sides: where it is in the dump and where its truth is."""

    load: Load
    kind: str  # first | last | random
    paddr: int
    truth: str = "ram-file"  # ram-file | dimm | ram-at-trigger (Truth.spans)

    @property
    def offset(self) -> int:
        return self.load.offset + (self.paddr - self.load.paddr)


def dump_loads(head: bytes) -> list[Load]:
    """The PT_LOADs of /proc/vmcore's head (ELF header and program headers)."""
    loads: list[Load] = []
    for segment in ELFFile(io.BytesIO(head)).iter_segments():
        if segment["p_type"] == "PT_LOAD":
            loads.append(Load(len(loads), segment["p_offset"], segment["p_paddr"],
                              segment["p_filesz"], segment["p_vaddr"]))
    return loads


# ------------------------------------------------------------------ ranges
Range = tuple[int, int]  # [start, end)


def merge(ranges: list[Range]) -> list[Range]:
    out: list[Range] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def subtract(ranges: list[Range], cut: Range) -> list[Range]:
    out = []
    for start, end in ranges:
        if end <= cut[0] or start >= cut[1]:
            out.append((start, end))
            continue
        if start < cut[0]:
            out.append((start, cut[0]))
        if end > cut[1]:
            out.append((cut[1], end))
    return out


def expected_ranges(system_ram: list[list[int]], crashkernel: list[int] | None) -> list[Range]:
    """System RAM (inclusive ends, as /proc/iomem prints them) above 1 MiB, minus the
    crashkernel reservation: what the dump must cover."""
    ranges = merge([(start, end + 1) for start, end in system_ram])
    if crashkernel and crashkernel[1] > crashkernel[0]:
        ranges = subtract(ranges, (crashkernel[0], crashkernel[1] + 1))
    return subtract(ranges, (0, LOW_MEMORY_END))


def _hex_ranges(ranges: list[Range]) -> list[str]:
    return [f"{start:#x}-{end:#x}" for start, end in ranges]


# ------------------------------------------------------------------ truth
def low_memory_now(memory: GuestMemory) -> bytes | None:
    """Guest RAM below 1 MiB as it is now (taken at the trigger: afterwards the capture
    kernel may run there); None where RAM does not start below 1 MiB (arm64, riscv64)."""
    if memory.base >= LOW_MEMORY_END:
        return None
    return memory.read(memory.base, min(LOW_MEMORY_END, memory.end) - memory.base)


@dataclass
class Truth:
    """Where the crashed kernel's memory is on the host, page by page."""

    memory: GuestMemory
    hot_memory: list[GuestMemory] = field(default_factory=list)
    low_memory: bytes | None = None
    _extents: dict = field(default_factory=dict)  # region -> its allocated extents

    def spans(self) -> list[tuple[int, int, str]]:
        """(start, end, kind) of every range the host knows the crashed kernel's memory of."""
        out = []
        if self.low_memory is not None:
            out.append((self.memory.base, self.memory.base + len(self.low_memory), "ram-at-trigger"))
        out.append((max(self.memory.base, LOW_MEMORY_END), self.memory.end, "ram-file"))
        out += [(dimm.base, dimm.end, "dimm") for dimm in self.hot_memory]
        return [(s, e, k) for s, e, k in out if e > s]

    def data(self, start: int, end: int, kind: str) -> list[Range]:
        """The parts of [start, end) that hold data on the host: the allocated extents of
        a RAM or DIMM file (reading a hole would only allocate a page of zeros), all of
        the low-memory copy."""
        if kind == "ram-at-trigger":
            return [(start, end)]
        region = next(m for m in [self.memory, *self.hot_memory] if m.base <= start < m.end)
        if region not in self._extents:
            self._extents[region] = list(region.written_ranges())
        return [(max(a, start), min(b, end)) for a, b in self._extents[region] if a < end and b > start]

    def page(self, paddr: int, kind: str) -> bytes:
        if kind == "ram-at-trigger":
            assert self.low_memory is not None, "a ram-at-trigger span"
            offset = paddr - self.memory.base
            return self.low_memory[offset:offset + PAGE]
        region = next(m for m in [self.memory, *self.hot_memory]
                      if m.base <= paddr and paddr + PAGE <= m.end)
        return region.read(paddr, PAGE)


# ------------------------------------------------------------------ facts
@dataclass
class DumpFacts:
    """Everything the checks read: the dump's head as served, the crashed kernel's own
    view of its memory (primary hello), the truth on the host (RAM file, hot-added
    DIMMs, low memory at the trigger), the ELF core headers in guest RAM, the console,
    and the guest's answers."""

    head: bytes
    primary: dict
    memory: GuestMemory
    console_lines: list[str]
    seed: int
    hot_added: list[Range] = field(default_factory=list)  # DIMMs hot-added after boot (smp.py)
    hot_memory: list[GuestMemory] = field(default_factory=list)  # their backing files
    low_memory: bytes | None = None  # low_memory_now() at the trigger
    headers: bytes | None = None  # the elfcorehdr segment as in guest RAM at the verdict
    no_reader: str | None = None  # why this architecture has no dump-log reader (arch.py)
    symbols: dump_cpus.Symbols | None = None  # the crashed kernel's kallsyms (kernel_symbols.py)
    symbols_missing: str | None = None  # why there are none
    online: list[int] | None = None  # CPUs online at the crash (None: the primary's hello)
    loads: list[Load] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    replies: dict[str, dict] = field(default_factory=dict)  # reply type -> message

    def __post_init__(self) -> None:
        self.truth = Truth(self.memory, self.hot_memory, self.low_memory)
        self.loads = dump_loads(self.head)
        self.samples = choose_pages(self.loads, self.seed, self.truth)

    def requests(self) -> dict[str, str]:
        """Reply type -> the command that asks the capture helper for it."""
        offsets = " ".join(f"{s.offset:x}" for s in self.samples)
        return {"vmcore-pages": f"vmcore-pages {offsets}", "vmcore-dmesg": "vmcore-dmesg"}


def choose_pages(loads: list[Load], seed: int, truth: Truth) -> list[Sample]:
    """First, last and RANDOM_PAGES random pages of every PT_LOAD in each range whose
    truth the host has (Truth.spans); addresses are guest physical."""
    rng = random.Random(seed)
    samples = []
    for load in loads:
        for start, end, kind in truth.spans():
            first = -(-max(load.paddr, start) // PAGE) * PAGE
            last = (min(load.end, end) - PAGE) // PAGE * PAGE
            if last < first:
                continue
            samples.append(Sample(load, "first", first, kind))
            if last != first:
                samples.append(Sample(load, "last", last, kind))
            for _ in range(RANDOM_PAGES):
                samples.append(Sample(load, "random", _page_with_data(rng, first, last, truth, kind), kind))
    return samples


def _page_with_data(rng: random.Random, first: int, last: int, truth: Truth, kind: str) -> int:
    """A random page of [first, last], drawn among the pages the host holds data for (a page
    of zeros only if every try found zeros, or there is no data there at all)."""
    pages = [(a // PAGE * PAGE, -(-b // PAGE) * PAGE) for a, b in truth.data(first, last + PAGE, kind)]
    total = sum(b - a for a, b in pages) // PAGE
    page = first
    for _ in range(RANDOM_TRIES if total else 1):
        if not total:
            return rng.randrange(first, last + PAGE, PAGE)
        n = rng.randrange(total)
        for a, b in pages:
            if n < (b - a) // PAGE:
                page = a + n * PAGE
                break
            n -= (b - a) // PAGE
        if truth.page(page, kind) != ZERO_PAGE:
            break
    return page


def _problem(evidence: dict, cause: str, text: str) -> None:
    evidence["problems"].append(text)
    if cause not in evidence["causes"]:
        evidence["causes"].append(cause)


# ------------------------------------------------------------------ checks
def check_ranges(facts: DumpFacts) -> dict:
    """The dumped physical ranges against System RAM minus the reservation."""
    primary = facts.primary
    expected = expected_ranges(primary.get("system_ram") or [], primary.get("crashkernel"))
    ram = merge([(s, e + 1) for s, e in primary.get("system_ram") or []])
    dumped = subtract(merge([(ld.paddr, ld.end) for ld in facts.loads]), (0, LOW_MEMORY_END))
    low = [ld.name() for ld in facts.loads if ld.paddr < LOW_MEMORY_END]
    evidence: dict = {"expected": _hex_ranges(expected), "hot_added": _hex_ranges(facts.hot_added),
                      "loads": [ld.to_json() for ld in facts.loads],
                      "low_memory": f"served by {', '.join(low)}, sampled against the RAM at the "
                                    "trigger" if low else "not in the dump",
                      "problems": [], "causes": []}
    if not primary.get("system_ram"):
        _problem(evidence, "pt-load-range", "the crashed kernel did not report its System RAM (/proc/iomem)")
    for start, end in _missing(expected, dumped):
        _problem(evidence, "pt-load-range",
                 f"System RAM {start:#x}-{end:#x} of the crashed kernel is not in the dump")
    allowed = merge(subtract(ram, _reservation(primary)) + facts.hot_added)
    for load in facts.loads:
        outside = subtract(_missing([(load.paddr, load.end)], allowed), (0, LOW_MEMORY_END))
        for start, end in outside:
            _problem(evidence, "pt-load-range",
                     f"{load.name()}: {start:#x}-{end:#x} is not System RAM of the "
                     "crashed kernel outside the crashkernel reservation")
    # Whether the dump covers hot-added memory is judged with the hotplug (smp.py).
    evidence["dumped"] = _hex_ranges(_missing(dumped, facts.hot_added))
    return evidence


def _reservation(primary: dict) -> Range:
    start, end = (primary.get("crashkernel") or [0, 0])[:2]
    return (start, end + 1) if end > start else (0, 0)


def _missing(wanted: list[Range], have: list[Range]) -> list[Range]:
    out = wanted
    for cut in have:
        out = subtract(out, cut)
    return out


def header_sources(headers: bytes) -> list[tuple[int, int]]:
    """(p_paddr, p_offset) of each PT_LOAD of the ELF core headers as loaded: p_offset is
    the physical address the capture kernel serves that PT_LOAD from."""
    return [(seg["p_paddr"], seg["p_offset"]) for seg in ELFFile(io.BytesIO(headers)).iter_segments()
            if seg["p_type"] == "PT_LOAD"]


def check_sources(facts: DumpFacts) -> dict:
    """Where the capture kernel serves each PT_LOAD from, as the headers in guest RAM say."""
    evidence: dict = {"problems": [], "causes": []}
    if facts.headers is None:
        evidence["read"] = False  # no elfcorehdr segment in the load's table: pages still decide
        return evidence
    try:
        sources = header_sources(facts.headers)
    except (ELFError, ValueError) as exc:
        _problem(evidence, "pt-load-offset", f"the ELF core headers in guest RAM do not parse: {exc}")
        return evidence
    evidence["sources"] = [[hex(paddr), hex(offset)] for paddr, offset in sources]
    if [paddr for paddr, _ in sources] != [ld.paddr for ld in facts.loads]:
        _problem(evidence, "pt-load-offset", "the dump's PT_LOADs are not those of the ELF core "
                 f"headers in guest RAM ({len(sources)} there, {len(facts.loads)} served)")
        return evidence
    reserved = _reservation(facts.primary)
    for load, (paddr, source) in zip(facts.loads, sources, strict=True):
        backup = paddr < LOW_MEMORY_END and reserved[0] <= source < reserved[1]
        if source != paddr and not backup:
            _problem(evidence, "pt-load-offset",
                     f"{load.name()}: the ELF core headers in guest RAM tell the capture kernel to "
                     f"serve it from {source:#x}, not from its physical address")
    return evidence


def _page_cause(sample: Sample, offsets: set[int]) -> str:
    if sample.load.index in offsets:
        return "pt-load-offset"
    return {"dimm": "hot-added-memory", "ram-at-trigger": "low-memory"}.get(sample.truth, "page-content")


def check_pages(facts: DumpFacts) -> dict:
    """Sampled pages: the capture helper's hash of /proc/vmcore vs the truth's."""
    reply = facts.replies.get("vmcore-pages")
    evidence: dict = {"seed": facts.seed, "page_size": PAGE, "problems": [], "causes": []}
    if reply is None:
        _problem(evidence, "no-answer", "the capture helper did not hash the sampled pages")
        return evidence
    offsets = _offset_loads(facts)
    served = {int(offset, 16): (digest, err) for offset, digest, err in reply.get("pages", [])}
    pages: list[dict] = []
    searched: set[int] = set()
    for sample in facts.samples:
        truth = hashlib.sha256(facts.truth.page(sample.paddr, sample.truth)).hexdigest()
        digest, err = served.get(sample.offset, (None, None))
        entry = {"pt_load": sample.load.index, "kind": sample.kind, "paddr": hex(sample.paddr),
                 "offset": hex(sample.offset), "truth": sample.truth, "ram_file": truth, "dump": digest}
        pages.append(entry)
        if digest is None:
            _problem(evidence, "page-unreadable",
                     f"{sample.load.name()}: /proc/vmcore could not be read at offset "
                     f"{sample.offset:#x} (paddr {sample.paddr:#x}, errno {err})")
        elif digest != truth:
            found = None
            if sample.load.index not in searched:  # one search of the RAM file per PT_LOAD
                searched.add(sample.load.index)
                found = entry["dump_found_at"] = _find_page(facts.memory, digest)
            where = {"dimm": "the DIMM's", "ram-at-trigger": "the RAM at the trigger's"}.get(
                sample.truth, "RAM file")
            _problem(evidence, _page_cause(sample, offsets),
                     f"{sample.load.name()}: the {sample.kind} page at paddr "
                     f"{sample.paddr:#x} differs: dump sha256 {digest[:16]} != {where} "
                     f"{truth[:16]}" + (f" (the dump serves the RAM file's page at {found})"
                                        if found else ""))
    sampled = {s.load.index for s in facts.samples}
    problems = evidence["problems"]
    evidence.update({"compared": len(pages), "pages": pages,
                     "not_sampled": [ld.name() for ld in facts.loads if ld.index not in sampled],
                     "problems": problems[:8] + ([f"... {len(problems) - 8} more"] if len(problems) > 8 else [])})
    for name in evidence["not_sampled"]:  # nothing on the host knows what it should hold
        _problem(evidence, "pt-load-range", f"{name}: no memory the host can read holds it")
    return evidence


def _offset_loads(facts: DumpFacts) -> set[int]:
    """PT_LOADs the headers in guest RAM serve from elsewhere than their physical address."""
    if facts.headers is None:
        return set()
    try:
        sources = header_sources(facts.headers)
    except (ELFError, ValueError):
        return set()
    return {i for i, (paddr, source) in enumerate(sources) if paddr != source and paddr >= LOW_MEMORY_END}


def _find_page(memory: GuestMemory, digest: str) -> str | None:
    """Which page of the RAM file the dump served instead (only pages holding data)."""
    for start, end in memory.written_ranges():
        for page in range(start // PAGE * PAGE, end, PAGE):
            if page + PAGE <= memory.end and \
                    hashlib.sha256(memory.read(page, PAGE)).hexdigest() == digest:
                return hex(page)
    return None


def dump_log(facts: DumpFacts) -> list[str] | None:
    """The crashed kernel's log as read out of the dump, timestamps removed (None: not read)."""
    reply = facts.replies.get("vmcore-dmesg")
    if reply is None or reply.get("type") == "error" or reply.get("rc") != 0:
        return None
    return [DMESG_TIMESTAMP.sub("", line) for line in reply.get("output", [])]


def check_log(facts: DumpFacts) -> dict:
    """The crashed kernel's log out of the dump holds the console's panic lines."""
    reply = facts.replies.get("vmcore-dmesg")
    evidence: dict = {"problems": [], "causes": []}
    if reply is None:
        _problem(evidence, "no-answer", "the capture helper did not run vmcore-dmesg")
        return evidence
    if reply.get("type") == "error" and reply.get("errno") == errno.ENOENT:
        if facts.no_reader:  # declared for the architecture: said, never counted as a pass
            return {**evidence, "checked": False, "why": facts.no_reader}
        _problem(evidence, "missing-reader", f"the capture initramfs has no {reply.get('what')}: "
                 "it was damaged or built without the dump-log reader")
        return evidence
    lines = [DMESG_TIMESTAMP.sub("", line) for line in reply.get("output", [])]
    found: list[str] = []
    evidence.update({"rc": reply.get("rc"), "lines": len(lines), "console_lines": facts.console_lines,
                     "found": found})
    if reply.get("type") == "error" or reply.get("rc") != 0:
        tail = " / ".join(lines[-2:]) or reply.get("strerror", "")
        _problem(evidence, "dump-log", f"vmcore-dmesg could not read the log out of the dump "
                                       f"(rc {reply.get('rc')}): {tail}")
        return evidence
    wanted = facts.console_lines or ["Kernel panic - not syncing"]
    for text in wanted:
        hit = next((line for line in lines if text in line), None)
        if hit is None:
            where = "the console showed" if facts.console_lines else "any panic needs"
            _problem(evidence, "dump-log", f"the log in the dump lacks {text!r}, which {where}")
        else:
            found.append(hit)
    return evidence


def check_cpus(facts: DumpFacts) -> dict:
    """The per-CPU notes and the panicking CPU, as the dump records them (dump_cpus.py)."""
    online = facts.online if facts.online is not None else parse_cpulist(facts.primary.get("cpus_online"))
    evidence = dump_cpus.check(facts.head, dump_log(facts), online, facts.symbols)
    evidence["causes"] = ["cpu-notes"] if evidence["problems"] else []
    if facts.symbols is None and facts.symbols_missing:
        evidence["unchecked"] = f"the PCs in the notes are not named: {facts.symbols_missing}"
    return evidence


CHECKS = {"ranges": check_ranges, "sources": check_sources, "pages": check_pages,
          "log": check_log, "cpus": check_cpus}


def verify(facts: DumpFacts) -> dict:
    """Run every check; the evidence names what differed in 'problems', what it was about
    in 'causes' (CAUSES), and what could not be checked here and why in 'unchecked'."""
    evidence: dict = {"ok": True, "problems": [], "causes": [], "unchecked": []}
    for name, check in CHECKS.items():
        evidence[name] = check(facts)
        evidence["problems"] += evidence[name]["problems"]
        evidence["causes"] += [c for c in evidence[name].pop("causes", []) if c not in evidence["causes"]]
        if evidence[name].get("checked") is False:
            evidence["unchecked"].append(f"{name}: {evidence[name]['why']}")
        elif evidence[name].get("unchecked"):
            evidence["unchecked"].append(f"{name}: {evidence[name]['unchecked']}")
    evidence["ok"] = not evidence["problems"]
    return evidence


def dmesg_text(facts: DumpFacts) -> str:
    """The log as read out of the dump, kept as an artifact."""
    return "\n".join((facts.replies.get("vmcore-dmesg") or {}).get("output", [])) + "\n"


def outcome(evidence: dict) -> str:
    """A dump that failed its checks: a capture initramfs without its reader is damaged,
    anything else is a dump that does not match the crashed kernel's memory."""
    return Outcome.CAPTURE_DAMAGED if "missing-reader" in evidence["causes"] else Outcome.DUMP_MISMATCH


def no_reader(arch: str, debian_arch: str | None) -> str | None:
    """Why a guest architecture has no dump-log reader: the lab takes vmcore-dmesg from
    Debian's archive for the guest's architecture (guest/userland.py), and Debian 12 has
    no port for some (riscv64).  None: the guest must carry one."""
    return None if debian_arch else (f"Debian 12 has no {arch} port, so the lab has no "
                                     f"vmcore-dmesg for {arch} guests: the dump's log is not read")
