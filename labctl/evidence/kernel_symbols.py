"""The crashed kernel's own symbols, read by drgn out of its memory on the host.

Debian's System.map is a placeholder (the real one is in the -dbg package), but
every kernel since 6.0 names the tables of its kallsyms in VMCOREINFO
(kernel/vmcore_info.c), so drgn can decode them from the kernel's memory alone:
here the guest RAM file (and hot-added DIMMs' files), which still holds the
crashed kernel while the capture kernel runs, through drgn's custom-kernel
target (physical segments + VMCOREINFO; drgn walks the page tables).  drgn is
the `dump` extra: without it, PCs are left unnamed and the evidence says so.
"""

from __future__ import annotations

import io

from elftools.elf.elffile import ELFFile

from labctl.guest.memory import GuestMemory

NOT_INSTALLED = "drgn is not installed (pip install 'kexec-lab[dump]'): PCs are not named"


def raw_vmcoreinfo(head: bytes) -> bytes | None:
    """The VMCOREINFO note's text as the kernel wrote it."""
    for segment in ELFFile(io.BytesIO(head)).iter_segments():
        if segment["p_type"] == "PT_NOTE":
            for note in segment.iter_notes():
                if note["n_name"] == "VMCOREINFO":
                    desc = note["n_desc"]
                    return desc if isinstance(desc, bytes) else str(desc).encode()
    return None


class KallsymsNames:
    """Names kernel text addresses with the crashed kernel's kallsyms."""

    def __init__(self, prog) -> None:
        self._prog = prog

    def name(self, address: int) -> str | None:
        try:
            symbol = self._prog.symbol(address)
        except LookupError:
            return None
        return f"{symbol.name}+{address - symbol.address:#x}"


def kallsyms(head: bytes, regions: list[GuestMemory]) -> tuple[KallsymsNames | None, str | None]:
    """The crashed kernel's kallsyms from the RAM files, or None and why not."""
    try:
        import drgn
        from drgn.helpers.linux.kallsyms import load_vmlinux_kallsyms
    except ImportError:
        return None, NOT_INSTALLED
    info = raw_vmcoreinfo(head)
    if info is None:
        return None, "the dump has no VMCOREINFO"
    prog = drgn.Program(drgn.host_platform)
    for region in regions:
        prog.add_memory_segment(region.base, region.size, _reader(region), physical=True)
    try:
        prog.set_linux_kernel_custom(info, False)
        index = load_vmlinux_kallsyms(prog)
    except (drgn.FaultError, LookupError, ValueError) as exc:
        return None, f"drgn could not read the kernel's kallsyms: {exc}"
    prog.register_symbol_finder("kallsyms", index, enable_index=0)
    return KallsymsNames(prog), None


def _reader(region: GuestMemory):
    def read(address: int, count: int, offset: int, physical: bool) -> bytes:
        return region.read(address, count)
    return read
