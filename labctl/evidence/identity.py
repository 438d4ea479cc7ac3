"""Which kernel did what after the panic: independent signals, each a vote.

One console line (a `Linux version` banner) used to decide whether a capture
kernel ran.  A quiet capture kernel prints no banner, and a primary kernel that
replays its log during panic prints its own; so every outcome about the capture
kernel rests here on signals that do not depend on console verbosity, and on
the console only as extra evidence:

- token: the lab puts `labctl_run=<token>` on the capture kernel's command
  line (and nowhere else).  The capture helper's hello reports /proc/cmdline,
  the capture init names the token it was given (its environment) in its own
  lines, and a verbose capture kernel prints it in `Kernel command line:`.  A
  `Kernel command line:` without it after the trigger is another kernel's (the
  primary replaying its log).
- where: the program counter of each vCPU, translated to a physical address
  by QEMU (`gva2gpa`, the vCPU's own page tables), inside or outside the
  crashkernel reservation: a capture kernel runs only in the reservation
  (x86 crash_setup_memmap_entries, arm64 linux,usable-memory-range), the
  crashed kernel never does.
- page tables: the vCPU's page-table root (x86 CR3, riscv satp), where the
  register dump shows one: the capture kernel's page tables are in its own
  memory.
- its own log: printk stores every record whatever the console shows, so the
  capture kernel's `Kernel command line:` record (with the token) and its
  `---[ end Kernel panic` record are in its memory, in the reservation, even
  when it prints nothing (loglevel=0 silences even panic(): console_verbose()
  only raises a non-zero level).  RamLog reads them from the RAM file while the
  console is silent; the crashed kernel's own log is outside the reservation.
- panic message: the message of a `---[ end Kernel panic` line against the
  crashed kernel's own panic (the first panic line after the trigger).  Equal:
  the crashed kernel gave up; different: another kernel panicked.  A panic line
  with no end line means the crashed kernel handed over (panic() prints its end
  line only when __crash_kexec() returns).  panic() prints these whatever the
  log level (console_verbose()).

An outcome needs at least two signals for it and none against; otherwise the
identity evidence names the disagreement and the judge fails the pair.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

TOKEN_PARAM = "labctl_run"  # kexec_lab_run= never reached init's environment on 6.12; labctl_* do
TOKEN = re.compile(TOKEN_PARAM + r"=([0-9a-f]{16})\b")
KERNEL_CMDLINE = re.compile(r"Kernel command line:[^\r\n]*\r?\n")  # whole lines
PANIC_MESSAGE = re.compile(r"Kernel panic - not syncing: ?(.*?)\s*(\]---)?\s*$")
GPA = re.compile(r"gpa: (?:0x)?([0-9a-fA-F]+)")
# The page-table root in `info registers` per architecture (arm64's dump shows none).
ROOTS = {"x86_64": re.compile(r"\bCR3=([0-9a-fA-F]+)"),
         "riscv64": re.compile(r"^\s*satp\s+([0-9a-fA-F]+)", re.MULTILINE)}
X86_CR3_ADDRESS = 0x000F_FFFF_FFFF_F000  # bits 12-51; the low bits are PCID / flags
RISCV_SATP_PPN = (1 << 44) - 1
MIN_SIGNALS = 2
CAPTURE, PRIMARY = "capture", "primary"


def new_token() -> str:
    """A token no kernel prints unless the lab put it on its command line."""
    return secrets.token_hex(8)


def with_token(cmdline: str, token: str) -> str:
    return f"{cmdline} {TOKEN_PARAM}={token}".strip()


def token_in(text: str | None) -> str | None:
    """The token a command line (or a line naming one) carries, if any."""
    found = TOKEN.search(text or "")
    return found[1] if found else None


def page_table_root(arch: str, part: str) -> int | None:
    """The physical address of a vCPU's page-table root from its part of the dump;
    None where the dump shows none or translation is off (riscv satp mode Bare)."""
    pattern = ROOTS.get(arch)
    found = pattern.search(part) if pattern else None
    if not found:
        return None
    value = int(found[1], 16)
    if arch == "riscv64":
        return (value & RISCV_SATP_PPN) << 12 if value >> 60 else None
    return value & X86_CR3_ADDRESS


def parse_gpa(reply: str) -> int | None:
    """QEMU's `gva2gpa` answer ("gpa: 0x..."); None when the address is unmapped."""
    found = GPA.search(reply or "")
    return int(found[1], 16) if found else None


@dataclass(frozen=True)
class Vote:
    """One signal's say: which kernel (capture or primary) and on what."""

    signal: str
    says: str
    detail: str

    def to_json(self) -> dict:
        return {"signal": self.signal, "says": self.says, "detail": self.detail}


@dataclass(frozen=True)
class Position:
    """A vCPU after the panic: its program counter, the physical address QEMU
    translated it to, and its page-table root (None: not known)."""

    cpu: int
    pc: int
    physical: int | None
    root: int | None = None

    def to_json(self) -> dict:
        return {"cpu": self.cpu, "pc": hex(self.pc),
                "physical": None if self.physical is None else hex(self.physical),
                "page_table_root": None if self.root is None else hex(self.root)}


def _inside(address: int | None, region: tuple[int, int]) -> bool:
    return address is not None and region[0] <= address <= region[1]


def where_votes(positions: list[Position], region: tuple[int, int] | None,
                shared: tuple[tuple[int, int], ...] = ()) -> list[Vote]:
    """The pc and page-table votes: a capture kernel runs on some vCPU inside the
    reservation; the crashed kernel's vCPUs are all outside it.  `shared` is memory either
    kernel may own (a DIMM the crashed kernel hot-added, which a capture kernel that finds
    its ACPI memory device onlines as its own RAM and may run in): a position there says
    nothing, so a signal whose positions are all outside the reservation and some in shared
    memory does not vote."""
    if not region or region[1] <= region[0] or not positions:
        return []
    span = f"crashkernel {region[0]:#x}-{region[1]:#x}"
    votes = []
    for signal, value in (("pc", lambda p: p.physical), ("page-tables", lambda p: p.root)):
        known = [p for p in positions if value(p) is not None]
        if not known:
            continue
        inside = [p for p in known if _inside(value(p), region)]
        what = "physical pc" if signal == "pc" else "page-table root"
        if inside:
            votes.append(Vote(signal, CAPTURE, f"vCPU {inside[0].cpu}'s {what} "
                              f"{value(inside[0]):#x} is inside the {span}"))
        elif not any(_inside(value(p), r) for p in known for r in shared):
            listed = ", ".join(f"vCPU {p.cpu} {value(p):#x}" for p in known)
            votes.append(Vote(signal, PRIMARY, f"every {what} is outside the {span} ({listed})"))
    return votes


def fault_loop_vote(faulting: dict) -> Vote:
    """A vCPU re-taking a fault at an address nothing maps (verdict.ParkWatch.faulting):
    only the kexec path turns the crashed kernel's MMU off, so the kernel it entered runs
    (and faulted) there."""
    return Vote("fault-loop", CAPTURE, f"vCPU {faulting['cpu']} re-takes a fault at {faulting['pc']}, "
                                       "which neither RAM nor its MMU maps: the kexec path switched "
                                       "the MMU off and the code it entered faulted")


@dataclass
class IdentityWatch:
    """What the console showed after the trigger that says which kernel printed it."""

    token: str | None
    ram: RamLog | None = None  # the capture kernel's own log, read from its memory
    cmdlines: list[str] = field(default_factory=list)  # `Kernel command line:` lines
    panics: list[str] = field(default_factory=list)  # panic messages, in order

    patterns = {"cmdline": KERNEL_CMDLINE}

    def console(self, hits: list[tuple[str, str]]) -> None:
        for name, line in hits:
            if name == "cmdline":
                self.cmdlines.append(line.strip()[:500])
            elif name == "panic" and (m := PANIC_MESSAGE.search(line.strip())):
                self.panics.append(m[1])

    def console_vote(self) -> Vote | None:
        """A `Kernel command line:` with this run's token: the capture kernel printed it;
        only lines without it: another kernel did (the primary replaying its log)."""
        if not self.token or not self.cmdlines:
            return None
        if ours := [line for line in self.cmdlines if token_in(line) == self.token]:
            return Vote("console-cmdline", CAPTURE, f"the console printed {ours[0][:200]!r}")
        return Vote("console-cmdline", PRIMARY, f"the console's `Kernel command line:` after the "
                                                f"trigger lacks this run's token: {self.cmdlines[0][:200]!r}")

    def end_vote(self, end_line: str) -> Vote | None:
        """Whose panic ended: the crashed kernel's own (the first after the trigger) or another."""
        ended = PANIC_MESSAGE.search(end_line.strip())
        if not ended or not self.panics:
            return None
        first = self.panics[0]
        if ended[1] == first:
            return Vote("panic-message", PRIMARY, f"the panic that ended is the crashed kernel's "
                                                  f"own ({first!r})")
        return Vote("panic-message", CAPTURE, f"the panic that ended ({ended[1]!r}) is not the "
                                              f"crashed kernel's ({first!r})")

    def needs_ram(self) -> bool:
        """Whether the capture kernel's log must be read from RAM: not once the console
        printed its command line, since a console that shows notices shows its panic too."""
        vote = self.console_vote()
        return self.ram is not None and (vote is None or vote.says != CAPTURE)

    def ram_votes(self) -> list[Vote]:
        return self.ram.votes() if self.ram else []

    def unended_vote(self) -> Vote | None:
        """The crashed kernel printed its panic line and no end line: __crash_kexec() did
        not return, so it handed over (a panic in NMI context prints nothing before kexec,
        and then this says nothing)."""
        if not self.panics:
            return None
        return Vote("panic-unended", CAPTURE, f"the crashed kernel's panic ({self.panics[0]!r}) "
                                              "never printed its end line")

    def token_vote(self, what: str, text: str | None) -> Vote:
        """A line or command line the capture side reported: this run's token or not."""
        got = token_in(text)
        if self.token and got == self.token:
            return Vote(what, CAPTURE, f"carries this run's token {TOKEN_PARAM}={got}")
        return Vote(what, PRIMARY, f"does not carry this run's token {TOKEN_PARAM}={self.token}"
                                   + (f" (it carries {got})" if got else ""))


def confirm(claim: str, votes: list[Vote | None], positions: list[Position] | None = None) -> dict:
    """The identity evidence for an outcome that claims `claim` (capture or primary):
    the votes, and a disagreement unless at least MIN_SIGNALS agree and none dissents."""
    cast = [v for v in votes if v is not None]
    agree = [v for v in cast if v.says == claim]
    against = [v for v in cast if v.says != claim]
    evidence: dict = {"claim": f"{claim} kernel", "votes": [v.to_json() for v in cast]}
    if positions:
        evidence["positions"] = [p.to_json() for p in positions]
    if against:
        evidence["disagreement"] = "; ".join(f"{v.signal} says the {v.says} kernel: {v.detail}"
                                             for v in against)
    elif len(agree) < MIN_SIGNALS:
        said = ", ".join(v.signal for v in agree) or "no signal"
        evidence["disagreement"] = (f"only {said} says the {claim} kernel; "
                                    f"{MIN_SIGNALS} independent signals are needed")
    return evidence


def decide_end(watch: IdentityWatch, end_line: str, where: list[Vote],
               positions: list[Position] | None = None) -> tuple[str, dict]:
    """An end-of-panic line (the console's, or a record in the capture kernel's memory):
    (capture or primary, identity evidence).  The side with more votes claims it (a tie:
    where the vCPUs are); the evidence says if any dissent."""
    votes = [*where, watch.console_vote(), watch.end_vote(end_line), *watch.ram_votes()]
    cast = [v for v in votes if v is not None]
    capture = sum(v.says == CAPTURE for v in cast)
    primary = sum(v.says == PRIMARY for v in cast)
    if capture != primary:
        claim = CAPTURE if capture > primary else PRIMARY
    else:
        claim = next((v.says for v in where if v.signal == "pc"), PRIMARY)
    return claim, confirm(claim, votes, positions)


CMDLINE_RECORD = b"Kernel command line: "
END_RECORD = b"---[ end Kernel panic - not syncing: "
RECORD_MAX = 1024  # printk's longest record text (PRINTKRB_RECORD_MAX)
LOG_WINDOW = 4 << 20  # printk's ring buffer lies within this of the record found first
# start_kernel() logs the command line first thing: a running kernel whose log has no record
# with the token after this many whole-reservation scans will not get one
FULL_SCANS = 3


def _record_text(data: bytes) -> str:
    """A printk record's text from the bytes at its start: up to the first NUL or newline."""
    end = min((i for i in (data.find(b"\0"), data.find(b"\n")) if i >= 0), default=len(data))
    return data[:end].decode("ascii", "replace")


@dataclass
class RamLog:
    """The capture kernel's own printk records, read from its memory in the RAM file.

    find(needle, start, end) and read(address, length) are GuestMemory's; ranges are the
    written (start, end) ranges of RAM (the rest is holes).  The token's `Kernel command
    line:` record is looked for in the whole reservation until found; the end-of-panic
    record only near it (printk's ring buffer), so a scan after the first costs little."""

    token: str | None
    region: tuple[int, int] | None
    log_at: int | None = None  # the token's `Kernel command line:` record
    cmdline: str | None = None
    end_at: int | None = None
    end_line: str | None = None
    scans: int = 0

    def _spans(self, ranges, low: int, high: int):
        for start, end in ranges:
            if min(end, high) > max(start, low):
                yield max(start, low), min(end, high)

    def _find_all(self, find, needle: bytes, ranges, low: int, high: int):
        for start, end in self._spans(ranges, low, high):
            while (at := find(needle, start, end)) >= 0:
                yield at
                start = at + len(needle)

    def scan(self, find, read, ranges) -> None:
        """Look for the records this scan can still find (see the class doc)."""
        if not self.region or not self.token:
            return
        ranges = list(ranges)
        if self.log_at is None and self.scans >= FULL_SCANS:
            return
        self.scans += 1
        if self.log_at is None:
            needle = f"{TOKEN_PARAM}={self.token}".encode()
            for at in self._find_all(find, needle, ranges, *self.region):
                head = read(max(self.region[0], at - RECORD_MAX), min(RECORD_MAX, at - self.region[0]))
                record = head.rfind(CMDLINE_RECORD)
                if record >= 0 and b"\0" not in head[record:] and b"\n" not in head[record:]:
                    self.log_at = at - len(head) + record
                    self.cmdline = _record_text(read(self.log_at, len(head) - record + len(needle)))
                    break
        if self.log_at is not None and self.end_at is None:
            low, high = max(self.region[0], self.log_at - LOG_WINDOW), min(self.region[1], self.log_at + LOG_WINDOW)
            for at in self._find_all(find, END_RECORD, ranges, low, high):
                # A record's text is not terminated in the ring: cut it at its own end
                text = _record_text(read(at, min(RECORD_MAX, self.region[1] - at)))
                close = text.find(" ]---")
                if close > 0 and not text[len(END_RECORD):].startswith("%s"):  # not the format
                    self.end_at, self.end_line = at, text[:close + len(" ]---")]
                    break

    def votes(self) -> list[Vote]:
        """What the capture kernel's own log in the reservation says."""
        out = []
        if self.log_at is not None:
            out.append(Vote("ram-cmdline", CAPTURE, f"the log in the reservation at {self.log_at:#x} "
                                                    f"holds {(self.cmdline or '')[:200]!r}"))
        if self.end_at is not None:
            out.append(Vote("ram-end", CAPTURE, f"the log in the reservation at {self.end_at:#x} "
                                                f"holds {(self.end_line or '')[:200]!r}"))
        return out


def disagreement(evidence: dict) -> str | None:
    """What the identity signals disagree on, if they do."""
    return (evidence.get("identity") or {}).get("disagreement")
