"""Pages out of a kdump-compressed dump (makedumpfile's own format, diskdump_mod.h).

kdump-tools saves `makedumpfile -F -c -d 31` output: flattened (`makedumpfile -R`
turns it back into this format first), zlib-compressed pages, zero, cache, user and
free pages left out.  The layout: one block of disk_dump_header ("KDUMP   ", the
crashed kernel's utsname, block size, bitmap size), the kdump_sub_header (VMCOREINFO's
place, max_mapnr for header version 6+), two bitmaps (the second says which page
frames were dumped), then one page_desc (offset, size, flags) per dumped page frame in
order, then the pages.  Read-only and bounded: every offset is checked against the
file's size before it is used.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SIGNATURE = b"KDUMP   "
UTS_FIELD = 65
PAGE_DESC = struct.Struct("<qIIQ")  # offset, size, flags, page_flags
COMPRESSED_ZLIB = 0x1
COMPRESSED_OTHER = 0x2 | 0x4 | 0x20  # lzo, snappy, zstd
# kdump_sub_header (diskdump_mod.h): offset_note, size_note at 48: the ELF notes of
# /proc/vmcore, copied whole (a few KiB per CPU)
MAX_NOTES = 1 << 20
ELF_MACHINES = {"x86_64": 62, "aarch64": 183, "riscv64": 243}  # utsname machine -> e_machine
ELF64_HEADER, ELF64_PHDR, PT_NOTE = 64, 56, 4


class KdumpFormatError(ValueError):
    """Not a (complete) kdump-compressed file."""


@dataclass(frozen=True)
class KdumpFile:
    path: Path
    header_version: int
    release: str
    machine: str
    block_size: int
    max_mapnr: int
    bitmap_offset: int
    bitmap_bytes: int  # each of the two bitmaps
    descs_offset: int
    vmcoreinfo: str
    notes: bytes = b""  # the ELF notes /proc/vmcore had (PRSTATUS per CPU, VMCOREINFO), as saved

    def dumped_pfns(self) -> list[int]:
        """The page frames the dump holds, in order (the second bitmap's set bits)."""
        with open(self.path, "rb") as f:
            f.seek(self.bitmap_offset + self.bitmap_bytes)
            bitmap = f.read(self.bitmap_bytes)
        pfns = []
        for index, byte in enumerate(bitmap):
            if byte:
                pfns += [index * 8 + bit for bit in range(8) if byte >> bit & 1]
        return [p for p in pfns if p < self.max_mapnr]

    def pages(self, wanted: set[int] | None = None) -> Iterator[tuple[int, bytes]]:
        """(pfn, page bytes) for every dumped page frame, or for those in `wanted`."""
        pfns = self.dumped_pfns()
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            for i, pfn in enumerate(pfns):
                if wanted is not None and pfn not in wanted:
                    continue
                f.seek(self.descs_offset + i * PAGE_DESC.size)
                raw = f.read(PAGE_DESC.size)
                if len(raw) < PAGE_DESC.size:
                    raise KdumpFormatError(f"{self.path}: page descriptor {i} is past the end")
                offset, length, flags, _ = PAGE_DESC.unpack(raw)
                if offset < 0 or length > self.block_size or offset + length > size:
                    raise KdumpFormatError(f"{self.path}: page {pfn:#x} lies outside the file")
                f.seek(offset)
                yield pfn, self._page(f.read(length), flags, pfn)

    def _page(self, data: bytes, flags: int, pfn: int) -> bytes:
        if flags & COMPRESSED_ZLIB:
            try:
                data = zlib.decompress(data)
            except zlib.error as exc:
                raise KdumpFormatError(f"{self.path}: page {pfn:#x}: {exc}") from None
        elif flags & COMPRESSED_OTHER:
            raise KdumpFormatError(f"{self.path}: page {pfn:#x} uses a compression other than "
                                   f"zlib (flags {flags:#x}); kdump-tools' -c writes zlib")
        if len(data) != self.block_size:
            raise KdumpFormatError(f"{self.path}: page {pfn:#x} is {len(data)} bytes")
        return data


def _cstring(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def open_kdump(path: Path) -> KdumpFile:
    """Parse the headers of a kdump-compressed file."""
    with open(path, "rb") as f:
        head = f.read(4096)
        if len(head) < 460 or head[:8] != SIGNATURE:
            raise KdumpFormatError(f"{path}: not a kdump-compressed file (signature {head[:8]!r})")
        version = struct.unpack_from("<i", head, 8)[0]
        uts = [_cstring(head[12 + i * UTS_FIELD:12 + (i + 1) * UTS_FIELD]) for i in range(6)]
        # after the utsname (12 + 390 bytes) a struct timeval aligned to 8: 408..424
        block_size, sub_blocks, bitmap_blocks, max_mapnr = struct.unpack_from("<iiII", head, 428)
        if block_size not in (4096, 16384, 65536) or bitmap_blocks == 0:
            raise KdumpFormatError(f"{path}: implausible header (block size {block_size}, "
                                   f"{bitmap_blocks} bitmap blocks)")
        f.seek(block_size)
        sub = f.read(104)
        if len(sub) < 104:
            raise KdumpFormatError(f"{path}: the sub-header is cut off")
        info_offset, info_size = struct.unpack_from("<qQ", sub, 32)
        if version >= 6:
            max_mapnr = struct.unpack_from("<Q", sub, 96)[0]
        vmcoreinfo = b""
        if 0 < info_size <= 1 << 20:
            f.seek(info_offset)
            vmcoreinfo = f.read(info_size)
        note_offset, note_size = struct.unpack_from("<qQ", sub, 48)
        notes = b""
        if 0 < note_size <= MAX_NOTES and note_offset > 0:
            f.seek(note_offset)
            notes = f.read(note_size)
    bitmap_offset = block_size * (1 + sub_blocks)
    bitmap_bytes = bitmap_blocks * block_size // 2
    return KdumpFile(path=path, header_version=version, release=uts[2], machine=uts[4],
                     block_size=block_size, max_mapnr=max_mapnr, bitmap_offset=bitmap_offset,
                     bitmap_bytes=bitmap_bytes, descs_offset=bitmap_offset + 2 * bitmap_bytes,
                     vmcoreinfo=vmcoreinfo.decode("ascii", "replace"), notes=notes)


def notes_as_elf_head(dump: KdumpFile) -> bytes:
    """The dump's saved notes as the head of an ELF core with one PT_NOTE: the form in which
    /proc/vmcore serves them and dump_cpus reads them (the PRSTATUS notes saved in the crash
    path); b"" for a machine the lab does not read registers of."""
    machine = ELF_MACHINES.get(dump.machine)
    if machine is None or not dump.notes:
        return b""
    header = struct.pack("<4sBBBB8xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 4, machine, 1, 0,
                         ELF64_HEADER, 0, 0, ELF64_HEADER, ELF64_PHDR, 1, 0, 0, 0)
    offset = ELF64_HEADER + ELF64_PHDR
    phdr = struct.pack("<IIQQQQQQ", PT_NOTE, 0, offset, 0, 0, len(dump.notes), len(dump.notes), 0)
    return header + phdr + dump.notes
