"""Purgatory: where its entry point is, its symbols, and the gdb command line that stops there.

Kernels from 6.7 print the entry point with KEXEC_FILE_DEBUG (`kexec_file_load:
type:1, start:0x...`); older ones (6.1) do not.  Every kernel with
KEXEC_FILE carries its purgatory as a relocatable ELF (kexec_purgatory[], the
build's purgatory.ro) with a symbol table, because kexec_file_load finds
`purgatory_sha_regions` and friends by name.  The running kernel's copy is in
guest RAM, so the lab finds it there, for Debian packages and built kernels
alike, and lays its sections out the way kexec_purgatory_setup_sechdrs() does:
that gives the entry point and every section's address for gdb's
add-symbol-file.  The object has no DWARF (purgatory is built without -g), so
gdb gets function and data symbols, not source lines.
"""

from __future__ import annotations

import io
import shlex
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from labctl.config.arch import HOST, Arch
from labctl.evidence.segments import SegmentTable
from labctl.guest.memory import GuestMemory

ELF64_LE = b"\x7fELF\x02\x01\x01"  # 64-bit, little-endian, ELF version 1
HEADER_SIZE = 64
MAX_OBJECT = 1 << 20
# kexec_file_load looks this up by name; kexec-tools' own purgatory (in the guest's
# /sbin/kexec) calls it sha256_regions, so it tells the kernel's copy apart.
KERNEL_SYMBOL = "purgatory_sha_regions"


@dataclass(frozen=True)
class Placement:
    """A loaded purgatory: its entry point and where each allocated section went."""

    entry: int
    sections: dict[str, int]
    entry_symbol: str | None = None


def _align(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment if alignment > 1 else value


def _kernel_purgatory(blob: bytes, machine: int = HOST.elf_machine) -> bytes | None:
    """The ELF object at the start of `blob`, trimmed to its size, if it is the kernel's purgatory."""
    header = blob[:HEADER_SIZE]
    if len(header) < HEADER_SIZE or int.from_bytes(header[16:18], "little") != 1 \
            or int.from_bytes(header[18:20], "little") != machine:  # ET_REL, the guest's EM_
        return None
    shoff, shentsize, shnum = (int.from_bytes(header[0x28:0x30], "little"),
                               int.from_bytes(header[0x3A:0x3C], "little"),
                               int.from_bytes(header[0x3C:0x3E], "little"))
    size = shoff + shentsize * shnum
    if not HEADER_SIZE <= size <= min(len(blob), MAX_OBJECT):
        return None
    try:
        symtab = ELFFile(io.BytesIO(blob[:size])).get_section_by_name(".symtab")
        found = symtab is not None and symtab.get_symbol_by_name(KERNEL_SYMBOL)
    except (ELFError, ValueError, IndexError):
        return None
    return blob[:size] if found else None


def find_in_memory(memory: GuestMemory, arch: Arch = HOST) -> bytes | None:
    """The running kernel's purgatory object (kexec_purgatory[]), found in guest RAM."""
    for start, end in memory.written_ranges():
        address = memory.find(ELF64_LE, start, end)
        while address != -1:
            blob = memory.read(address, min(MAX_OBJECT, memory.end - address))
            if obj := _kernel_purgatory(blob, arch.elf_machine):
                return obj
            address = memory.find(ELF64_LE, address + 1, end)
    return None


def place(obj: bytes, mem: int, bufsz: int) -> Placement:
    """Section addresses and entry point as kexec_purgatory_setup_sechdrs() computes them
    for a purgatory loaded at `mem`: allocated sections packed in order at their alignment,
    NOBITS after the buffer, the entry moved with the executable section that holds it."""
    elf = ELFFile(io.BytesIO(obj))
    e_entry, entry, symbol = elf.header.e_entry, None, None
    offset, bss = 0, mem + bufsz
    sections = {}
    for index, section in enumerate(elf.iter_sections()):
        if not section["sh_flags"] & SH_FLAGS.SHF_ALLOC:
            continue
        if section["sh_type"] == "SHT_NOBITS":
            bss = _align(bss, section["sh_addralign"])
            sections[section.name] = bss
            bss += section["sh_size"]
            continue
        offset = _align(offset, section["sh_addralign"])
        start = section["sh_addr"]
        if entry is None and section["sh_flags"] & SH_FLAGS.SHF_EXECINSTR \
                and start <= e_entry < start + section["sh_size"]:
            entry, symbol = mem + offset + e_entry - start, _symbol_at(elf, index, e_entry)
        sections[section.name] = mem + offset
        offset += section["sh_size"]
    if entry is None:
        raise ValueError(f"purgatory entry {e_entry:#x} is in no executable section")
    return Placement(entry, sections, symbol)


def _symbol_at(elf: ELFFile, section: int, value: int) -> str | None:
    """The name of the code symbol at `value` in `section` (purgatory_start on x86)."""
    return next((s.name for s in elf.get_section_by_name(".symtab").iter_symbols()
                 if s.name and s["st_shndx"] == section and s["st_value"] == value
                 and s["st_info"]["type"] in ("STT_FUNC", "STT_NOTYPE")), None)


def locate(table: SegmentTable, obj: bytes | None) -> Placement | None:
    """Where purgatory is in this load; the kernel's own log wins over the computation."""
    segment = table.by_role("purgatory")
    placement = place(obj, segment.mem, segment.bufsz) if obj and segment else None
    if table.entry is not None and (placement is None or placement.entry != table.entry):
        return Placement(table.entry, placement.sections if placement else {},
                         placement.entry_symbol if placement else None)
    return placement


def gdb_argv(port: int, placement: Placement | None, symbols: Path | None,
             arch: Arch = HOST) -> list[str]:
    """gdb on QEMU's gdbstub: purgatory's symbols and a hardware breakpoint at its entry."""
    argv = [arch.gdb, "-q", "-ex", "set confirm off", "-ex", f"set architecture {arch.gdb_architecture}"]
    if placement and symbols and ".text" in placement.sections:
        sections = " ".join(f"-s {name} {address:#x}" for name, address in placement.sections.items())
        argv += ["-ex", f"add-symbol-file {symbols} {sections}"]
    argv += ["-ex", f"target remote 127.0.0.1:{port}"]
    if placement:
        argv += ["-ex", f"hbreak *{placement.entry:#x}"]
    return argv + ["-ex", "continue"]


def gdb_hint(port: int, placement: Placement | None, symbols: Path | None, loaded: bool,
             arch: Arch = HOST) -> str:
    """What to tell the person: the exact command line, and where it will stop."""
    if loaded and placement is None and not arch.file_purgatory_checks:
        note = f"{arch.name}'s kexec_file_load has no purgatory: no breakpoint"
    elif not loaded:
        note = "the purgatory breakpoint is added once the capture kernel is loaded"
    elif placement is None:
        note = "purgatory's entry point is unknown for this load: no breakpoint"
    else:
        name = f" ({placement.entry_symbol})" if placement.entry_symbol else ""
        note = f"stops at purgatory's entry {placement.entry:#x}{name} after the panic"
    argv = gdb_argv(port, placement, symbols, arch)
    return f"gdb (gdbstub on 127.0.0.1:{port}; {note}):\n  {shlex.join(argv)}"
