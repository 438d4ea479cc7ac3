"""Kernel images to hand to the load syscall: the real one and the bad ones.

Bad images answer "what does the syscall return for ...?": garbage, an empty
file, a truncated bzImage, and the kernel's own ELF vmlinux (the 2013 thread
wanted an ELF loader; x86_64 only has the bzImage64 loader).  The vmlinux is
the one inside the bzImage: its payload is the compressed `vmlinux.bin`
(objcopy -S of vmlinux, still an ELF file), which the decompressor tools of
the matching format unpack.  All are deterministic.
"""

from __future__ import annotations

import io
import random

from elftools.elf.elffile import ELFFile

from labctl.errors import InfraError
from labctl.tools import run_tool

BAD_IMAGES = ("garbage", "empty", "truncated", "elf-vmlinux")
SIGNED_IMAGES = ("signed", "unsigned", "wrong-key", "tampered")  # made by signing.py
KERNEL_IMAGES = ("default", *BAD_IMAGES, *SIGNED_IMAGES)
GARBAGE_SEED = 2013
UNPACK_SECONDS = 120.0
GARBAGE_SIZE = 64 * 1024

# Payload magic -> the CLI that decompresses it (Debian: zstd, lz4, xz-utils, gzip).
DECOMPRESSORS = (
    (b"\x28\xb5\x2f\xfd", ["zstd", "-dcq"]),
    (b"\x02\x21\x4c\x18", ["lz4", "-dcq"]),
    (b"\xfd7zXZ\x00", ["xz", "-dc"]),
    (b"\x1f\x8b", ["gzip", "-dc"]),
)


def _le32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset:offset + 4], "little")


def bzimage_payload(bzimage: bytes) -> bytes:
    """The compressed kernel inside a bzImage, without the appended size word."""
    if bzimage[0x202:0x206] != b"HdrS":
        raise InfraError("not a bzImage (no HdrS setup header)")
    setup_sects = bzimage[0x1F1] or 4
    start = (setup_sects + 1) * 512 + _le32(bzimage, 0x248)
    return bzimage[start:start + _le32(bzimage, 0x24C) - 4]


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF vmlinux a bzImage carries; InfraError if it cannot be unpacked."""
    payload = bzimage_payload(bzimage)
    argv = next((cmd for magic, cmd in DECOMPRESSORS if payload.startswith(magic)), None)
    if argv is None:
        raise InfraError(f"unknown bzImage payload compression (magic {payload[:6].hex()})")
    proc = run_tool(argv, "unpacking the bzImage payload", UNPACK_SECONDS, input=payload, text=False)
    if not proc.stdout.startswith(b"\x7fELF"):
        raise InfraError("the unpacked bzImage payload is not an ELF file")
    return proc.stdout


def is_elf_executable(data: bytes) -> bool:
    elf = ELFFile(io.BytesIO(data))
    return elf["e_type"] == "ET_EXEC" and elf["e_machine"] == "EM_X86_64"


def bad_image(kind: str, bzimage: bytes) -> bytes:
    """The bytes of one bad image, derived from the real bzImage where that matters."""
    if kind == "garbage":
        return random.Random(GARBAGE_SEED).randbytes(GARBAGE_SIZE)
    if kind == "empty":
        return b""
    if kind == "truncated":
        return bzimage[: len(bzimage) // 2]
    if kind == "elf-vmlinux":
        return extract_vmlinux(bzimage)
    raise ValueError(f"unknown bad image {kind!r}")


def guest_path(kind: str) -> str:
    """Where an image sits in the primary guest."""
    if kind == "default":
        return "/boot/vmlinuz"
    return f"/boot/sig/{kind}" if kind in SIGNED_IMAGES else f"/boot/bad/{kind}"

