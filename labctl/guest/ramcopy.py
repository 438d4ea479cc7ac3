"""Copying a guest's RAM file: only what is allocated, since the file is sparse.

A 1 GiB guest that booted and loaded a capture kernel has touched a fraction of
its RAM; the rest of the memory-backend-file is holes.  SEEK_DATA/SEEK_HOLE find
the extents that hold data and sendfile copies them, so a restore costs the
guest's footprint, not its size.
"""

from __future__ import annotations

import os
from pathlib import Path

CHUNK = 1 << 20
ZERO_CHUNK = bytes(CHUNK)


def data_extents(fd: int, size: int):
    """(start, end) of the allocated extents of a file (SEEK_DATA/SEEK_HOLE)."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after offset
            return
        offset = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, offset


def sparse_copy(src: Path, dst: Path, skip_zeros: bool = False) -> int:
    """Copy src to a new private file dst keeping its holes; return the bytes written.

    skip_zeros also leaves out chunks that are allocated but all zeros (pages the
    guest touched and cleared), which is worth a read when saving a snapshot once,
    not on every restore."""
    written = 0
    with open(src, "rb") as fin:
        size = os.fstat(fin.fileno()).st_size
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            for start, end in data_extents(fin.fileno(), size):
                if skip_zeros:
                    written += _copy_nonzero(fin, fd, start, end)
                else:
                    written += _copy_range(fin.fileno(), fd, start, end)
        finally:
            os.close(fd)
    return written


def _copy_range(fd_in: int, fd_out: int, start: int, end: int) -> int:
    os.lseek(fd_out, start, os.SEEK_SET)
    offset = start
    while offset < end:
        sent = os.sendfile(fd_out, fd_in, offset, min(end - offset, 1 << 30))
        if sent == 0:
            raise OSError(f"short copy at {offset:#x}")
        offset += sent
    return end - start


def _copy_nonzero(fin, fd_out: int, start: int, end: int) -> int:
    written = 0
    fin.seek(start)
    offset = start
    while offset < end:
        chunk = fin.read(min(CHUNK, end - offset))
        if not chunk:
            break
        if chunk != ZERO_CHUNK[:len(chunk)]:
            os.pwrite(fd_out, chunk, offset)
            written += len(chunk)
        offset += len(chunk)
    return written


def allocated_bytes(path: Path) -> int:
    """Bytes a (sparse) file really holds on its filesystem."""
    return os.stat(path).st_blocks * 512
