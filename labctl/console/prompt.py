"""The lab prompt of `labctl console`: its commands, their arguments, their help, and
what each one does to the live guest (PromptCommands).

Parsing is a pure function so that every message a typo can produce is
unit-tested, and the session only ever acts on a valid Command: a bad line
costs the person one error message, never the guest.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Callable, Protocol

from labctl.config.arch import HOST, Arch
from labctl.config.schema import PATTERNS, PLACEMENTS, SEGMENT_ROLES, TRIGGERS, Corruption
from labctl.errors import ConfigError
from labctl.evidence.purgatory import Placement
from labctl.evidence.segments import SegmentTable
from labctl.evidence.verdict import parse_registers
from labctl.guest.console import StampedLog
from labctl.pair.steps import Finding, Loaded, Session

MAX_PEEK = 4096          # bytes one `peek` may dump
MAX_CORRUPT = 1 << 20    # bytes one `corrupt` may overwrite
ESCAPE_NAME = "Ctrl-]"
PANIC_TRIGGERS = tuple(t for t in TRIGGERS if t != "none")  # "none" is a scenario's "do not"


class Speaker:
    """The lab's own output: to the terminal (raw mode needs CR LF) and to lab.log."""

    def __init__(self, transcript: StampedLog):
        self.transcript = transcript
        self.on_console = False

    def say(self, text: str) -> None:
        if self.on_console:
            text = text.replace("\n", "\r\n")
        print(text, flush=True)
        self.transcript.write(text.replace("\r\n", "\n") + "\n")

    def typed(self, line: str) -> None:
        """A prompt line as the person typed it, for lab.log."""
        self.transcript.write(f"lab> {line}\n")


class UsageError(ValueError):
    """A line the prompt cannot run; the message says what would be accepted."""


@dataclass(frozen=True)
class Command:
    name: str
    args: dict = field(default_factory=dict)


def parse_int(text: str, what: str) -> int:
    """Decimal or 0x-prefixed hex, never negative."""
    try:
        value = int(text, 0)
    except ValueError:
        raise UsageError(f"{what} must be a number (decimal or 0x hex), got {text!r}") from None
    if value < 0:
        raise UsageError(f"{what} must be 0 or more, got {text}")
    return value


def _no_args(words: list[str]) -> dict:
    if words:
        raise UsageError(f"takes no arguments (got {' '.join(words)!r})")
    return {}


def _corrupt(words: list[str]) -> dict:
    if not 1 <= len(words) <= 4:
        raise UsageError("needs a segment role and at most OFFSET LENGTH PATTERN")
    role, offset, length, pattern = (words + [None] * 3)[:4]
    if role not in SEGMENT_ROLES:
        raise UsageError(f"unknown segment role {role!r}; roles: {', '.join(SEGMENT_ROLES)}")
    defaults = Corruption(segment=role)
    where: int | str = defaults.offset if offset is None else \
        offset if offset in PLACEMENTS else parse_int(offset, "OFFSET")
    size = defaults.length if length is None else parse_int(length, "LENGTH")
    if not 1 <= size <= MAX_CORRUPT:
        raise UsageError(f"LENGTH must be between 1 and {MAX_CORRUPT}, got {size}")
    pattern = pattern or defaults.pattern
    if pattern not in PATTERNS:
        raise UsageError(f"unknown pattern {pattern!r}; patterns: {', '.join(PATTERNS)}")
    return {"corruption": Corruption(segment=role, offset=where, length=size, pattern=pattern)}


def _peek(words: list[str]) -> dict:
    if len(words) != 2:
        raise UsageError("needs an address and a length")
    address, length = parse_int(words[0], "ADDR"), parse_int(words[1], "LEN")
    if not 1 <= length <= MAX_PEEK:
        raise UsageError(f"LEN must be between 1 and {MAX_PEEK}, got {length}")
    return {"address": address, "length": length}


def _panic(words: list[str]) -> dict:
    if len(words) > 1:
        raise UsageError("takes at most one trigger")
    if words and words[0] not in PANIC_TRIGGERS:
        raise UsageError(f"unknown trigger {words[0]!r}; triggers: {', '.join(PANIC_TRIGGERS)}")
    return {"trigger": words[0] if words else None}


@dataclass(frozen=True)
class Spec:
    usage: str
    summary: str
    parse: Callable[[list[str]], dict] = _no_args


COMMANDS: dict[str, Spec] = {
    "help": Spec("help", "list these commands"),
    "segments": Spec("segments", "the loaded segment table, with roles and the entry point"),
    "load": Spec("load", "run the scenario's load step (its load method) if it has not run"),
    "corrupt": Spec("corrupt ROLE [OFFSET] [LENGTH] [PATTERN]",
                    f"overwrite bytes of a loaded segment; OFFSET a byte offset or "
                    f"{'|'.join(PLACEMENTS)} (middle), LENGTH (16), PATTERN "
                    f"{'|'.join(PATTERNS)} (flip)", _corrupt),
    "peek": Spec("peek ADDR LEN", f"hex dump of guest physical memory (LEN <= {MAX_PEEK})", _peek),
    "regs": Spec("regs", "each vCPU's registers, and the segment its RIP falls in"),
    "panic": Spec("panic [TRIGGER]", f"crash the guest kernel: {'|'.join(PANIC_TRIGGERS)} "
                                     "(default: the scenario's trigger)",
                  _panic),
    "verdict": Spec("verdict", "what the lab would conclude now, with its evidence"),
    "gdb": Spec("gdb", "the gdb command line for this session (needs --gdb)"),
    "continue": Spec("continue", "run the scenario's remaining steps, wait for the verdict, "
                                 "then return to the console"),
    "console": Spec("console", "back to the guest console"),
    "quit": Spec("quit", "end the session: stop QEMU, keep the artifacts"),
}


def parse(line: str) -> Command | None:
    """One typed line -> Command; None for a blank line; UsageError for anything else."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot read that line: {exc}") from None
    if not words:
        return None
    name, rest = words[0].lower(), words[1:]
    spec = COMMANDS.get(name)
    if spec is None:
        raise UsageError(f"unknown command {words[0]!r}; `help` lists the commands")
    try:
        return Command(name, spec.parse(rest))
    except UsageError as exc:
        raise UsageError(f"{name}: {exc} (usage: {spec.usage})") from None


def help_text() -> str:
    width = max(len(s.usage) for s in COMMANDS.values())
    lines = [f"  {s.usage:{width}}  {s.summary}" for s in COMMANDS.values()]
    return "\n".join(["lab prompt commands:", *lines,
                      f"{ESCAPE_NAME} on the console comes back here; Ctrl-C here ends the session."])


def hexdump(address: int, data: bytes, width: int = 16) -> str:
    """Lines of 'address: hex bytes  |ascii|', the way hexdump -C shows them."""
    lines = []
    for start in range(0, len(data), width):
        chunk = data[start:start + width]
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{address + start:#018x}: {chunk.hex(' '):<{width * 3 - 1}}  |{text}|")
    return "\n".join(lines)


def format_segments(table: SegmentTable, placement: Placement | None) -> str:
    lines = [f"{'#':>2} {'role':12} {'mem':>12} {'memsz':>10} {'bufsz':>10}"]
    for s in table.segments:
        lines.append(f"{s.index:>2} {s.role or '?':12} {s.mem:#12x} {s.memsz:#10x} {s.bufsz:#10x}")
    if placement is None:
        lines.append("entry: unknown (not in this kernel's log, no kernel purgatory object in RAM)")
    else:
        how = "from the load's log" if table.entry is not None else \
            "computed from the kernel's purgatory object; this kernel does not log it"
        name = f" {placement.entry_symbol}" if placement.entry_symbol else ""
        lines.append(f"entry: {placement.entry:#x}{name} ({how})")
    return "\n".join(lines)


def format_registers(text: str, table: SegmentTable, arch: Arch = HOST) -> str:
    """Each vCPU's general registers (and x86's control registers), then where its
    program counter is."""
    lines = [line for line in text.splitlines()
             if arch is not HOST or line.startswith(("CPU#", "R", "CR0="))]
    for cpu, rip in sorted(parse_registers(text, arch).items()):
        segment = table.containing(rip)
        where = f"{segment.role or f'segment {segment.index}'} +{rip - segment.mem:#x}" if segment \
            else "no loaded segment"
        lines.append(f"CPU#{cpu} {arch.pc_name}={rip:#x} is in {where}")
    return "\n".join(lines)


class GdbTarget(Protocol):
    gdb_port: int | None  # --gdb: QEMU's gdbstub port, None without it


class Guest(Protocol):
    """What the prompt and the terminal need of the live guest (interactive.LiveGuest, which
    imports them: this protocol keeps the imports one way)."""

    session: Session
    stage: str | None
    loaded: Loaded | None

    @property
    def pair(self) -> GdbTarget: ...
    def table(self) -> SegmentTable: ...
    def load(self) -> Loaded: ...
    def corrupt(self, corruption: Corruption) -> dict: ...
    def panic(self, trigger: str | None) -> None: ...
    def verdict_now(self) -> Finding | None: ...
    def report(self, finding: Finding | None) -> None: ...
    def purgatory(self) -> Placement | None: ...
    def show_gdb(self) -> None: ...
    def run_rest(self) -> None: ...
    def after_exit(self) -> None: ...


class PromptCommands:
    """What each command does to the live guest.  run() returns what the terminal does
    next: "console", "quit", or None (the prompt again)."""

    def __init__(self, guest: Guest, speaker: Speaker):
        self.guest, self.speaker = guest, speaker
        self.say = speaker.say

    def run(self, line: str) -> str | None:
        """Run one prompt line; any mistake ends in a message and the prompt again."""
        self.speaker.typed(line)
        try:
            command = parse(line)
            return getattr(self, f"do_{command.name}")(**command.args) if command else None
        except (UsageError, ConfigError) as exc:
            self.say(str(exc))
            return None

    def do_help(self) -> None:
        self.say(help_text())

    def do_segments(self) -> None:
        loaded = self.guest.loaded
        if not loaded:
            raise UsageError(f"nothing loaded yet (stage {self.guest.stage}); `load` runs the load step")
        if loaded.rejected:
            m = loaded.message
            raise UsageError(f"the load was rejected (rc {m.get('rc')}, errno {m.get('errno')} "
                             f"{m.get('strerror') or ''}): no segments")
        self.say(format_segments(loaded.table, self.guest.purgatory()))

    def do_load(self) -> None:
        loaded = self.guest.load()
        if not loaded.rejected:
            self.say(format_segments(loaded.table, self.guest.purgatory()))

    def do_corrupt(self, corruption: Corruption) -> None:
        e = self.guest.corrupt(corruption)
        self.say(f"corrupted {e['length']} bytes of {e['segment']['role']} at {e['address']} "
                 f"(+{e['offset']}): before {e['before']} after {e['after']}")

    def do_peek(self, address: int, length: int) -> None:
        try:
            data = self.guest.session.memory.read(address, length)
        except ValueError as exc:
            raise UsageError(f"peek: {exc}") from None
        segment = self.guest.table().containing(address)
        self.say((f"in {segment.role or f'segment {segment.index}'} +{address - segment.mem:#x}\n"
                  if segment else "") + hexdump(address, data))

    def do_regs(self) -> None:
        text = self.guest.session.machine.hmp("info registers -a")
        self.say(format_registers(text, self.guest.table(), self.guest.session.arch))

    def do_panic(self, trigger: str | None) -> None:
        self.guest.panic(trigger)
        self.say("panic sent; `verdict` says what the lab sees, `console` shows the guest")

    def do_verdict(self) -> None:
        self.guest.report(self.guest.verdict_now())

    def do_gdb(self) -> None:
        if self.guest.pair.gdb_port is None:
            raise UsageError("gdb: QEMU's gdbstub is off; start the session with --gdb [PORT]")
        self.guest.show_gdb()

    def do_continue(self) -> str:
        self.guest.run_rest()
        return "console"

    def do_console(self) -> str:
        return "console"

    def do_quit(self) -> str:
        return "quit"
