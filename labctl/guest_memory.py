"""Guest physical memory through the shared RAM backing file.

On the `pc` machine with at most 3 GiB of RAM, guest physical address X is
offset X of the memory-backend-file, so the host can read and write it while
the guest runs.  Every write is a before/after record: original bytes, the
bytes written, and the bytes read back.
"""

from __future__ import annotations

import mmap
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path


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
    """Read/write guest physical memory below the PCI hole through a mapping."""

    def __init__(self, path: Path):
        self._fd = os.open(path, os.O_RDWR)
        self.size = os.fstat(self._fd).st_size
        self._map = mmap.mmap(self._fd, self.size, mmap.MAP_SHARED)

    def _check(self, address: int, length: int) -> None:
        if address < 0 or length <= 0 or address + length > self.size:
            raise ValueError(f"guest range {address:#x}+{length:#x} is outside RAM (0..{self.size:#x})")

    def read(self, address: int, length: int) -> bytes:
        self._check(address, length)
        return self._map[address:address + length]

    def find(self, needle: bytes, start: int, end: int) -> int:
        """Guest physical address of `needle` in [start, end), or -1 (no copy of RAM)."""
        return self._map.find(needle, start, end)

    def written_ranges(self):
        """(start, end) of the RAM the guest has touched: the rest of the file is holes, and
        reading a hole through the mapping would only allocate pages of zeros."""
        offset = 0
        while offset < self.size:
            try:
                start = os.lseek(self._fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after offset
                return
            offset = os.lseek(self._fd, start, os.SEEK_HOLE)
            yield start, offset

    def write(self, address: int, data: bytes) -> None:
        self._check(address, len(data))
        self._map[address:address + len(data)] = data
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
