"""A deterministic cpio "newc" writer for the guest initramfs.

Same inputs, same bytes: mtimes are 0, owners root, inode numbers count up
from 1 in the order entries are added.  That is what lets the initramfs be
cached by content hash.  The kernel unpacks concatenated archives, so the
primary initramfs is the capture one with a second archive appended.
"""

from __future__ import annotations

import stat

TRAILER = "TRAILER!!!"


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _record(ino: int, name: str, mode: int, data: bytes, rdev: tuple[int, int]) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    return header + encoded + _pad4(len(header) + len(encoded)) + data + _pad4(len(data))


class CpioWriter:
    """Collects entries in memory; `getvalue()` returns the archive bytes."""

    def __init__(self) -> None:
        self._records: list[bytes] = []
        self._names: set[str] = set()

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name = name.strip("/")
        if not name or name in self._names or name == TRAILER:
            raise ValueError(f"cpio: empty, reserved or duplicate entry name {name!r}")
        self._names.add(name)
        self._records.append(_record(len(self._records) + 1, name, mode, data, rdev))

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._add(name, stat.S_IFDIR | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._add(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._add(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._add(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def getvalue(self) -> bytes:
        """The archive with its trailer, padded to 512 bytes as cpio(1) does."""
        data = b"".join(self._records) + _record(0, TRAILER, 0, b"", (0, 0))
        return data + b"\0" * (-len(data) % 512)


def regular_files(archive: bytes) -> dict[str, bytes]:
    """Name -> data of the regular files in concatenated newc archives (a later entry of
    the same name wins, as when the kernel unpacks them): what guests/init checks."""
    files: dict[str, bytes] = {}
    offset = 0
    while offset + 110 <= len(archive):
        if archive[offset:offset + 6] != b"070701":  # padding between archives
            offset += 4
            continue
        fields = [int(archive[offset + 6 + 8 * i:offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_end = offset + 110 + namesize
        name = archive[offset + 110:name_end - 1].decode()
        data_start = name_end + (-(110 + namesize) % 4)
        if name != TRAILER and stat.S_ISREG(mode):
            files[name] = archive[data_start:data_start + size]
        offset = data_start + size + (-size % 4)
    return files
