"""The dump checked against the truth: what /proc/vmcore serves vs the guest RAM file.

The crashed kernel's memory outside the crashkernel reservation is still in
the RAM file while the capture kernel runs, so the host holds the truth the
dump must serve.  Three checks, each a function of DumpFacts that returns its
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
  physical address.  The capture kernel has no business writing any of them:
  it runs in the reservation and the low 1 MiB, which are never sampled.
- log: the crashed kernel's log, read out of the dump by kexec-tools'
  vmcore-dmesg (from VMCOREINFO, no vmlinux), holds the panic lines the
  serial console showed.  fs/proc/vmcore.c takes each PT_LOAD's p_offset as
  the physical address to serve and checks it against nothing, so a wrong
  elfcorehdr shows up here and in the pages, not earlier.
"""

from __future__ import annotations

import errno
import hashlib
import io
import random
import re
from dataclasses import dataclass, field

from elftools.elf.elffile import ELFFile

from labctl.guest.memory import GuestMemory

PAGE = 4096
LOW_MEMORY_END = 1 << 20  # the capture kernel's own RAM below this (see module doc)
RANDOM_PAGES = 4  # per PT_LOAD, besides its first and last page
RANDOM_TRIES = 64  # candidates per random page before a page of zeros is accepted
ZERO_PAGE = bytes(PAGE)
DMESG_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")


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
    """A page to hash on both sides: where it is in the dump and in the RAM file."""

    load: Load
    kind: str  # first | last | random
    paddr: int

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


# ------------------------------------------------------------------ facts
@dataclass
class DumpFacts:
    """Everything the checks read: the dump's head as served, the crashed kernel's own
    view of its memory (primary hello), the RAM file, the console, the guest's answers."""

    head: bytes
    primary: dict
    memory: GuestMemory
    console_lines: list[str]
    seed: int
    hot_added: list[Range] = field(default_factory=list)  # DIMMs hot-added after boot (smp.py)
    loads: list[Load] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    replies: dict[str, dict] = field(default_factory=dict)  # reply type -> message

    def __post_init__(self) -> None:
        self.loads = dump_loads(self.head)
        self.samples = choose_pages(self.loads, self.seed, self.memory)

    def requests(self) -> dict[str, str]:
        """Reply type -> the command that asks the capture helper for it."""
        offsets = " ".join(f"{s.offset:x}" for s in self.samples)
        return {"vmcore-pages": f"vmcore-pages {offsets}", "vmcore-dmesg": "vmcore-dmesg"}


def choose_pages(loads: list[Load], seed: int, memory: GuestMemory) -> list[Sample]:
    """First, last and RANDOM_PAGES random pages of every PT_LOAD, above 1 MiB and inside
    the RAM file (a hot-added DIMM has a memory backend of its own); addresses are guest
    physical (GuestMemory.end: RAM base + size, labctl/config/arch.py)."""
    rng = random.Random(seed)
    samples = []
    for load in loads:
        first = -(-max(load.paddr, LOW_MEMORY_END) // PAGE) * PAGE
        last = (min(load.end, memory.end) - PAGE) // PAGE * PAGE
        if last < first:
            continue
        samples.append(Sample(load, "first", first))
        if last != first:
            samples.append(Sample(load, "last", last))
        for _ in range(RANDOM_PAGES):
            samples.append(Sample(load, "random", _page_with_data(rng, first, last, memory)))
    return samples


def _page_with_data(rng: random.Random, first: int, last: int, memory: GuestMemory) -> int:
    page = first
    for _ in range(RANDOM_TRIES):
        page = rng.randrange(first, last + PAGE, PAGE)
        if page + PAGE <= memory.end and memory.read(page, PAGE) != ZERO_PAGE:
            break
    return page


# ------------------------------------------------------------------ checks
def check_ranges(facts: DumpFacts) -> dict:
    """The dumped physical ranges against System RAM minus the reservation."""
    primary = facts.primary
    expected = expected_ranges(primary.get("system_ram") or [], primary.get("crashkernel"))
    ram = merge([(s, e + 1) for s, e in primary.get("system_ram") or []])
    dumped = subtract(merge([(ld.paddr, ld.end) for ld in facts.loads]), (0, LOW_MEMORY_END))
    problems = []
    if not primary.get("system_ram"):
        problems.append("the crashed kernel did not report its System RAM (/proc/iomem)")
    for start, end in _missing(expected, dumped):
        problems.append(f"System RAM {start:#x}-{end:#x} of the crashed kernel is not in the dump")
    allowed = merge(subtract(ram, _reservation(primary)) + facts.hot_added)
    for load in facts.loads:
        outside = subtract(_missing([(load.paddr, load.end)], allowed), (0, LOW_MEMORY_END))
        for start, end in outside:
            problems.append(f"{load.name()}: {start:#x}-{end:#x} is not System RAM of the "
                            "crashed kernel outside the crashkernel reservation")
    # Whether the dump covers hot-added memory is judged with the hotplug (smp.py).
    dumped = _missing(dumped, facts.hot_added)
    return {"expected": _hex_ranges(expected), "dumped": _hex_ranges(dumped),
            "hot_added": _hex_ranges(facts.hot_added),
            "loads": [ld.to_json() for ld in facts.loads], "problems": problems}


def _reservation(primary: dict) -> Range:
    start, end = (primary.get("crashkernel") or [0, 0])[:2]
    return (start, end + 1) if end > start else (0, 0)


def _missing(wanted: list[Range], have: list[Range]) -> list[Range]:
    out = wanted
    for cut in have:
        out = subtract(out, cut)
    return out


def check_pages(facts: DumpFacts) -> dict:
    """Sampled pages: the capture helper's hash of /proc/vmcore vs the RAM file's."""
    reply = facts.replies.get("vmcore-pages")
    if reply is None:
        return {"problems": ["the capture helper did not hash the sampled pages"]}
    served = {int(offset, 16): (digest, err) for offset, digest, err in reply.get("pages", [])}
    pages, problems, searched = [], [], set()
    for sample in facts.samples:
        truth = hashlib.sha256(facts.memory.read(sample.paddr, PAGE)).hexdigest()
        digest, err = served.get(sample.offset, (None, None))
        entry = {"pt_load": sample.load.index, "kind": sample.kind, "paddr": hex(sample.paddr),
                 "offset": hex(sample.offset), "ram_file": truth, "dump": digest}
        pages.append(entry)
        if digest is None:
            problems.append(f"{sample.load.name()}: /proc/vmcore could not be read at offset "
                            f"{sample.offset:#x} (paddr {sample.paddr:#x}, errno {err})")
        elif digest != truth:
            found = None
            if sample.load.index not in searched:  # one search of the RAM file per PT_LOAD
                searched.add(sample.load.index)
                found = entry["dump_found_at"] = _find_page(facts.memory, digest)
            problems.append(f"{sample.load.name()}: the {sample.kind} page at paddr "
                            f"{sample.paddr:#x} differs: dump sha256 {digest[:16]} != RAM file "
                            f"{truth[:16]}" + (f" (the dump serves the RAM file's page at {found})"
                                               if found else ""))
    sampled = {s.load.index for s in facts.samples}
    return {"seed": facts.seed, "page_size": PAGE, "compared": len(pages), "pages": pages,
            "not_sampled": [ld.name() for ld in facts.loads if ld.index not in sampled],
            "problems": problems[:8] + ([f"... {len(problems) - 8} more"] if len(problems) > 8 else [])}


def _find_page(memory: GuestMemory, digest: str) -> str | None:
    """Which page of the RAM file the dump served instead (only pages holding data)."""
    for start, end in memory.written_ranges():
        for page in range(start // PAGE * PAGE, end, PAGE):
            if page + PAGE <= memory.end and \
                    hashlib.sha256(memory.read(page, PAGE)).hexdigest() == digest:
                return hex(page)
    return None


def check_log(facts: DumpFacts) -> dict:
    """The crashed kernel's log out of the dump holds the console's panic lines."""
    reply = facts.replies.get("vmcore-dmesg")
    if reply is None:
        return {"problems": ["the capture helper did not run vmcore-dmesg"]}
    if reply.get("type") == "error" and reply.get("errno") == errno.ENOENT:
        # a guest architecture the lab has no vmcore-dmesg for (riscv64: no Debian port):
        # the log is not checked, which is said, not counted as a pass or a problem
        return {"checked": False, "why": f"the guest carries no {reply.get('what')}",
                "problems": []}
    lines = [DMESG_TIMESTAMP.sub("", line) for line in reply.get("output", [])]
    found: list[str] = []
    problems: list[str] = []
    evidence = {"rc": reply.get("rc"), "lines": len(lines), "console_lines": facts.console_lines,
                "found": found, "problems": problems}
    if reply.get("type") == "error" or reply.get("rc") != 0:
        tail = " / ".join(lines[-2:]) or reply.get("strerror", "")
        problems.append(f"vmcore-dmesg could not read the log out of the dump "
                                    f"(rc {reply.get('rc')}): {tail}")
        return evidence
    wanted = facts.console_lines or ["Kernel panic - not syncing"]
    for text in wanted:
        hit = next((line for line in lines if text in line), None)
        if hit is None:
            where = "the console showed" if facts.console_lines else "any panic needs"
            problems.append(f"the log in the dump lacks {text!r}, which {where}")
        else:
            found.append(hit)
    return evidence


CHECKS = {"ranges": check_ranges, "pages": check_pages, "log": check_log}


def verify(facts: DumpFacts) -> dict:
    """Run every check; the evidence names what differed in 'problems'."""
    evidence: dict = {"ok": True, "problems": []}
    for name, check in CHECKS.items():
        evidence[name] = check(facts)
        evidence["problems"] += evidence[name]["problems"]
    evidence["ok"] = not evidence["problems"]
    return evidence


def dmesg_text(facts: DumpFacts) -> str:
    """The log as read out of the dump, kept as an artifact."""
    return "\n".join((facts.replies.get("vmcore-dmesg") or {}).get("output", [])) + "\n"

