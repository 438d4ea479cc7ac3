"""The segment table of a loaded capture kernel, parsed from the kernel's own log.

kexec_file_load does not return where it put things; the kernel says so in
its log (KEXEC_FILE_DEBUG since 6.7, pr_debug through dynamic debug before).
For kexec_load, kexec-tools builds the segments itself and `kexec -d` says
where it put them, one field per line.
Each line format is one row of a table below, so a kernel that words things
differently needs one new row, not a special case in the code.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace

HEX = r"0x([0-9a-fA-F]+)"

# "kexec_file: segment[3]: buf=... bufsz=0x.. mem=0x.. memsz=0x.." (6.7+)
# "kexec_file: Loading segment 3: buf=... bufsz=0x.. mem=0x.. memsz=0x.." (before)
SEGMENT_LINES = (
    re.compile(rf"segment\[(\d+)\]: buf=\S+ bufsz={HEX} mem={HEX} memsz={HEX}"),
    re.compile(rf"Loading segment (\d+): buf=\S+ bufsz={HEX} mem={HEX} memsz={HEX}"),
)
# kexec-tools: "segment[3].bufsz = 0x5085", ".mem", ".memsz" on lines of their own
SEGMENT_FIELD_LINE = re.compile(rf"segment\[(\d+)\]\.(bufsz|mem|memsz)\s*=\s*{HEX}")

# What each segment is: arch/x86/kernel/kexec-bzimage64.c and crash.c (kexec_file_load),
# kexec/arch/i386/*.c in kexec-tools (kexec_load).
ROLE_LINES = (
    ("purgatory", re.compile(rf"Loaded purgatory at (?:addr )?{HEX}")),
    ("boot_params", re.compile(rf"Loaded boot_param, command line and misc at {HEX}")),
    ("boot_params", re.compile(rf"Loaded real_mode_data and command line at {HEX}")),
    ("kernel", re.compile(rf"Loaded 64bit kernel at {HEX}")),
    ("initrd", re.compile(rf"Loaded initrd at {HEX}")),
    ("elfcorehdr", re.compile(rf"Loaded ELF headers at {HEX}")),
    ("elfcorehdr", re.compile(rf"Created elf header segment at {HEX}")),
    ("backup", re.compile(rf"Created backup segment at {HEX}")),
    # arm64 (arch/arm64/kernel/kexec_image.c, machine_kexec_file.c) and riscv64
    # (arch/riscv/kernel/machine_kexec_file.c) under KEXEC_FILE_DEBUG
    ("kernel", re.compile(rf"Loaded kernel at {HEX}")),
    ("elfcorehdr", re.compile(rf"Loaded elf core header at {HEX}")),
    ("dtb", re.compile(rf"Loaded dtb at {HEX}")),
    ("dtb", re.compile(rf"Loaded device tree at {HEX}")),
    # kexec-tools on arm64 (kexec/arch/arm64/kexec-image-arm64.c, kexec-arm64.c,
    # crashdump-arm64.c under -d); some print bare hex
    ("kernel", re.compile(r"image_arm64_load: kernel_segment: (?:0x)?([0-9a-fA-F]+)")),
    ("initrd", re.compile(r"^initrd: base (?:0x)?([0-9a-fA-F]+), size")),
    ("dtb", re.compile(r"^dtb:\s+base (?:0x)?([0-9a-fA-F]+), size")),
    ("elfcorehdr", re.compile(rf"load_crashdump_segments: elfcorehdr {HEX}-")),
)
# kexec-tools always enters the new kernel through its purgatory (info->entry =
# purgatory_start): the segment holding that entry is purgatory even where no line says so.
TOOL_ENTRY = re.compile(rf"kexec_load: entry = {HEX}")

ENTRY_LINES = (
    re.compile(rf"kexec_file_load: type:\d+, start:{HEX}"),
    re.compile(rf"kexec_load: entry = {HEX}"),
)


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


def _segment_fields(line: str) -> tuple[int, dict[str, int]] | None:
    """(index, {field: value}) from one line of any known segment format."""
    for pattern in SEGMENT_LINES:
        if m := pattern.search(line):
            return int(m[1]), {"bufsz": int(m[2], 16), "mem": int(m[3], 16), "memsz": int(m[4], 16)}
    if m := SEGMENT_FIELD_LINE.search(line):
        return int(m[1]), {m[2]: int(m[3], 16)}
    return None


def parse_segment_table(lines: list[str], unlogged_kernel: bool = False) -> SegmentTable:
    """Segments with roles from log lines; roles the log does not name stay None.

    unlogged_kernel: the loader adds the kernel's segments first and says nothing about
    them (riscv64's ELF loader, kexec_elf.c: one segment per PT_LOAD), so the unnamed
    segments before the first named one are the kernel."""
    rows: dict[int, dict[str, int]] = {}
    roles: dict[int, str] = {}
    entry = None
    for line in lines:
        if found := _segment_fields(line):
            rows.setdefault(found[0], {}).update(found[1])
        for role, pattern in ROLE_LINES:
            if m := pattern.search(line):
                roles[int(m[1], 16)] = role
        for pattern in ENTRY_LINES:
            if m := pattern.search(line):
                entry = int(m[1], 16)
    segments = tuple(Segment(index=i, mem=row["mem"], memsz=row["memsz"], bufsz=row["bufsz"],
                             role=roles.get(row["mem"]))
                     for i, row in sorted(rows.items()) if {"mem", "memsz", "bufsz"} <= row.keys())
    tool_entry = next((int(m[1], 16) for line in lines if (m := TOOL_ENTRY.search(line))), None)
    if tool_entry is not None and not any(s.role == "purgatory" for s in segments):
        segments = tuple(replace(s, role="purgatory") if s.role is None and s.contains(tool_entry)
                         else s for s in segments)
    if unlogged_kernel:
        leading = next((i for i, s in enumerate(segments) if s.role), len(segments))
        segments = tuple(replace(s, role="kernel") if i < leading else s
                         for i, s in enumerate(segments))
    return SegmentTable(segments=segments, entry=entry)
