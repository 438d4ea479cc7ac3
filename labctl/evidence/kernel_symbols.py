"""The crashed kernel's own symbols, read by drgn out of its memory on the host.

Debian's System.map is a placeholder (the real one is in the -dbg package), but
every kernel since 6.0 names the tables of its kallsyms in VMCOREINFO
(kernel/vmcore_info.c), so drgn can decode them from the kernel's memory alone:
here the guest RAM file (and hot-added DIMMs' files), which still holds the
crashed kernel while the capture kernel runs, through drgn's custom-kernel
target (physical segments + VMCOREINFO; drgn walks the page tables).  drgn is
the `dump` extra: without it, PCs are left unnamed and the evidence says so.
A build's table is kept in the lab's cache (the first run of a kernel pays the decoding).
"""

from __future__ import annotations

import bisect
import io
import os
from array import array
from pathlib import Path

from elftools.elf.elffile import ELFFile

from labctl.guest.memory import GuestMemory

# the dump's e_machine -> drgn.Architecture (the guest's, not the host's)
ARCHITECTURES = {"EM_X86_64": "X86_64", "EM_AARCH64": "AARCH64", "EM_RISCV": "RISCV64"}
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


class Table:
    """A kernel's function symbols, addresses without the KASLR offset, cached per build
    (VMCOREINFO's BUILD-ID): decoding kallsyms takes drgn a second or two under TCG load,
    loading this table a few milliseconds (names are decoded only when looked up)."""

    def __init__(self, addresses: array, sizes: array, names: bytes, starts: array, offset: int = 0):
        self.addresses, self.sizes, self.names, self.starts = addresses, sizes, names, starts
        self.offset = offset

    @classmethod
    def of(cls, functions: list[tuple[int, int, str]], offset: int = 0) -> "Table":
        """From (address without the offset, size, name), sorted by address."""
        blob = "\n".join(f[2] for f in functions).encode()
        starts, at = array("Q"), 0
        for f in functions:
            starts.append(at)
            at += len(f[2].encode()) + 1
        return cls(array("Q", [f[0] for f in functions]), array("Q", [f[1] for f in functions]),
                   blob, starts, offset)

    def name(self, address: int) -> str | None:
        """function+0xoff, or None outside every function."""
        at = address - self.offset
        i = bisect.bisect_right(self.addresses, at) - 1
        if i < 0 or at >= self.addresses[i] + self.sizes[i]:
            return None
        end = self.starts[i + 1] - 1 if i + 1 < len(self.starts) else len(self.names)
        return f"{self.names[self.starts[i]:end].decode()}+{at - self.addresses[i]:#x}"

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        count = len(self.addresses).to_bytes(8, "little")
        tmp.write_bytes(count + self.addresses.tobytes() + self.sizes.tobytes() + self.starts.tobytes()
                        + self.names)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, offset: int) -> "Table":
        data = path.read_bytes()
        count = int.from_bytes(data[:8], "little")
        columns = [array("Q") for _ in range(3)]
        for i, column in enumerate(columns):
            column.frombytes(data[8 + 8 * count * i:8 + 8 * count * (i + 1)])
        return cls(columns[0], columns[1], data[8 + 24 * count:], columns[2], offset)


def kallsyms(head: bytes, regions: list[GuestMemory], cache: Path | None = None) -> tuple[Table | None, str | None]:
    """The crashed kernel's function symbols (from `cache` if this build was decoded before),
    or None and why not."""
    info = raw_vmcoreinfo(head)
    if info is None:
        return None, "the dump has no VMCOREINFO"
    pairs = dict(line.split("=", 1) for line in info.decode(errors="replace").splitlines() if "=" in line)
    offset = int(pairs.get("KERNELOFFSET", "0"), 16)
    cached = cache / f"{pairs['BUILD-ID']}.v2.kallsyms" if cache and pairs.get("BUILD-ID") else None
    if cached is not None and cached.is_file():
        return Table.load(cached, offset), None
    table, why = _decode(info, ELFFile(io.BytesIO(head))["e_machine"], regions, offset)
    if table is not None and cached is not None:
        table.save(cached)
    return table, why


def _decode(info: bytes, machine: str, regions: list[GuestMemory], offset: int) -> tuple[Table | None, str | None]:
    try:
        import drgn
        from drgn.helpers.linux.kallsyms import load_vmlinux_kallsyms
    except ImportError:
        return None, NOT_INSTALLED
    arch = ARCHITECTURES.get(machine)
    if arch is None:
        return None, f"drgn has no platform here for {machine} dumps"
    flags = drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN
    prog = drgn.Program(drgn.Platform(getattr(drgn.Architecture, arch), flags))
    for region in regions:
        prog.add_memory_segment(region.base, region.size, _reader(region), physical=True)
    try:
        prog.set_linux_kernel_custom(info, False)
        index = load_vmlinux_kallsyms(prog)
    except (drgn.FaultError, LookupError, ValueError, OverflowError) as exc:
        return None, f"drgn could not read the kernel's kallsyms: {exc}"
    functions = sorted((s.address - offset, s.size, s.name) for s in index(prog, None, None, False)
                       if s.kind == drgn.SymbolKind.FUNC and s.size)
    return Table.of(functions, offset), None


def _reader(region: GuestMemory):
    def read(address: int, count: int, offset: int, physical: bool) -> bytes:
        return region.read(address, count)
    return read
