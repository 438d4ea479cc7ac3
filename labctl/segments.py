"""The segment table of a loaded capture kernel, parsed from the kernel's own log.

kexec_file_load does not return where it put things; the kernel says so in
its log (KEXEC_FILE_DEBUG since 6.7, pr_debug through dynamic debug before).
Each line format is one row of a table below, so a kernel that words things
differently needs one new row, not a special case in the code.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

HEX = r"0x([0-9a-fA-F]+)"

# "kexec_file: segment[3]: buf=... bufsz=0x.. mem=0x.. memsz=0x.." (6.7+)
# "kexec_file: Loading segment 3: buf=... bufsz=0x.. mem=0x.. memsz=0x.." (before)
SEGMENT_LINES = (
    re.compile(rf"segment\[(\d+)\]: buf=\S+ bufsz={HEX} mem={HEX} memsz={HEX}"),
    re.compile(rf"Loading segment (\d+): buf=\S+ bufsz={HEX} mem={HEX} memsz={HEX}"),
)

# What each segment is, from arch/x86/kernel/kexec-bzimage64.c and crash.c.
ROLE_LINES = (
    ("purgatory", re.compile(rf"Loaded purgatory at {HEX}")),
    ("boot_params", re.compile(rf"Loaded boot_param, command line and misc at {HEX}")),
    ("kernel", re.compile(rf"Loaded 64bit kernel at {HEX}")),
    ("initrd", re.compile(rf"Loaded initrd at {HEX}")),
    ("elfcorehdr", re.compile(rf"Loaded ELF headers at {HEX}")),
)

ENTRY_LINE = re.compile(rf"kexec_file_load: type:(\d+), start:{HEX}")


@dataclass(frozen=True)
class Segment:
    index: int
    mem: int
    memsz: int
    bufsz: int
    role: str | None

    def contains(self, address: int) -> bool:
        return self.mem <= address < self.mem + self.memsz

    def to_json(self) -> dict:
        return {**asdict(self), "mem": hex(self.mem), "memsz": hex(self.memsz), "bufsz": hex(self.bufsz)}


@dataclass(frozen=True)
class SegmentTable:
    segments: tuple[Segment, ...]
    entry: int | None = None

    def by_role(self, role: str) -> Segment | None:
        return next((s for s in self.segments if s.role == role), None)

    def containing(self, address: int) -> Segment | None:
        return next((s for s in self.segments if s.contains(address)), None)

    def to_json(self) -> dict:
        return {"entry": hex(self.entry) if self.entry is not None else None,
                "segments": [s.to_json() for s in self.segments]}


def parse_segment_table(lines: list[str]) -> SegmentTable:
    """Segments with roles from kernel log lines; roles the log does not name stay None."""
    rows: dict[int, tuple[int, int, int]] = {}
    roles: dict[int, str] = {}
    entry = None
    for line in lines:
        for pattern in SEGMENT_LINES:
            if m := pattern.search(line):
                index, bufsz, mem, memsz = int(m[1]), int(m[2], 16), int(m[3], 16), int(m[4], 16)
                rows[index] = (mem, memsz, bufsz)
        for role, pattern in ROLE_LINES:
            if m := pattern.search(line):
                roles[int(m[1], 16)] = role
        if m := ENTRY_LINE.search(line):
            entry = int(m[2], 16)
    segments = tuple(Segment(index=i, mem=mem, memsz=memsz, bufsz=bufsz, role=roles.get(mem))
                     for i, (mem, memsz, bufsz) in sorted(rows.items()))
    return SegmentTable(segments=segments, entry=entry)
