"""Guest physical memory through the shared RAM backing file.

Guest RAM is one memory-backend-file whose first byte is guest physical
address `base` (labctl/config/arch.py's ram_base: 0 on x86_64's `pc` with at most
3 GiB, 0x40000000 on aarch64 virt, 0x80000000 on riscv64 virt), so the host
can read and write it while the guest runs.  `GuestMemory.offset` is the one
place that maps an address to a file offset; everything here takes and returns
guest physical addresses.  Every write is a before/after record: original bytes, the
bytes written, and the bytes read back.
"""

from __future__ import annotations

import mmap
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from labctl.guest.ramcopy import data_extents


@dataclass(frozen=True)
class Write:
    """Evidence of one corruption: where, what was there, what is there now."""

    address: int
    length: int
    pattern: str
    seed: int | None
    before: str
    written: str
    after: str

    @property
    def verified(self) -> bool:
        return self.after == self.written and self.before != self.after

    def to_json(self) -> dict:
        return {**asdict(self), "address": hex(self.address), "verified": self.verified}


def pattern_bytes(original: bytes, pattern: str, seed: int = 0) -> bytes:
    """The bytes that replace `original`: every bit flipped, zeros, or seeded random."""
    if pattern == "flip":
        return bytes(b ^ 0xFF for b in original)
    if pattern == "zero":
        return bytes(len(original))
    if pattern == "random":
        rng = random.Random(seed)
        data = bytes(rng.getrandbits(8) for _ in original)
        # never a no-op: a random byte equal to the original is flipped
        return bytes(d if d != o else o ^ 0xFF for d, o in zip(data, original, strict=True))
    if pattern == "bit":
        return bytes([original[0] ^ 0x01]) + original[1:]
    raise ValueError(f"unknown pattern {pattern!r}")


class GuestMemory:
    """Read/write guest physical memory through a mapping of the RAM file."""

    def __init__(self, path: Path, base: int = 0):
        self._fd = os.open(path, os.O_RDWR)
        self.base = base
        self.size = os.fstat(self._fd).st_size
        self._map = mmap.mmap(self._fd, self.size, mmap.MAP_SHARED)

    @property
    def end(self) -> int:
        """The first guest physical address past RAM."""
        return self.base + self.size

    def offset(self, address: int) -> int:
        """Offset in the RAM file of guest physical `address` (the one mapping)."""
        return address - self.base

    def _check(self, address: int, length: int) -> int:
        offset = self.offset(address)
        if offset < 0 or length <= 0 or offset + length > self.size:
            raise ValueError(f"guest range {address:#x}+{length:#x} is outside RAM "
                             f"({self.base:#x}..{self.end:#x})")
        return offset

    def read(self, address: int, length: int) -> bytes:
        offset = self._check(address, length)
        return self._map[offset:offset + length]

    def find(self, needle: bytes, start: int, end: int) -> int:
        """Guest physical address of `needle` in [start, end), or -1 (no copy of RAM)."""
        found = self._map.find(needle, max(0, self.offset(start)), max(0, self.offset(end)))
        return -1 if found < 0 else found + self.base

    def written_ranges(self):
        """(start, end) guest physical addresses of the RAM the guest has touched: the rest
        of the file is holes, and reading a hole through the mapping would only allocate
        pages of zeros."""
        for start, end in data_extents(self._fd, self.size):
            yield start + self.base, end + self.base

    def write(self, address: int, data: bytes) -> None:
        offset = self._check(address, len(data))
        self._map[offset:offset + len(data)] = data
        self._map.flush()

    def corrupt(self, address: int, length: int, pattern: str, seed: int = 0) -> Write:
        before = self.read(address, length)
        written = pattern_bytes(before, pattern, seed)
        self.write(address, written)
        after = self.read(address, length)
        return Write(address=address, length=length, pattern=pattern,
                     seed=seed if pattern == "random" else None,
                     before=before.hex(), written=written.hex(), after=after.hex())

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
