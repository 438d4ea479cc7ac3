"""A kernel ready to boot and what is known about it, whichever provider made it
(kernel/providers.py: Debian packages and paths; kernel/build.py: recipes)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CONFIG_LINE = re.compile(r"^(?:(CONFIG_\w+)=(.*)|# (CONFIG_\w+) is not set)$")


def config_values(config_text: str) -> dict[str, str]:
    """CONFIG_* -> value as written in a .config or fragment ('n' for 'is not set')."""
    values = {}
    for line in config_text.splitlines():
        if m := CONFIG_LINE.match(line.strip()):
            values[m[1] or m[3]] = m[2] if m[1] else "n"
    return values


def parse_config(text: str) -> dict[str, str]:
    """CONFIG_* values of a kernel .config, string quotes removed ("n" for "is not set")."""
    return {key: value.strip('"') for key, value in config_values(text).items()}


@dataclass(frozen=True)
class Kernel:
    """A kernel ready to boot, and what is known about it."""

    name: str
    bzimage: Path
    release: str
    package: str | None = None
    version: str | None = None
    config: Path | None = None
    recipe: dict | None = None  # recipe kernels: build key, source, patches (kernel/build.py)
    arch: str = "x86_64"  # labctl/config/arch.py: which QEMU, ports, memory map, parked-vCPU signature
    kexec_image: Path | None = None  # what the capture kernel is loaded from, if not bzimage

    @property
    def modules_dir(self) -> Path | None:
        """lib/modules/RELEASE of an unpacked Debian kernel package, if it has one."""
        path = self.bzimage.parent.parent / "lib" / "modules" / self.release
        return path if path.is_dir() else None

    @property
    def capture_image(self) -> Path:
        """The image kexec loads (riscv64: the ELF vmlinux; elsewhere the boot image)."""
        return self.kexec_image or self.bzimage

    def config_symbols(self) -> dict[str, str]:
        """CONFIG_* values from the kernel's config file ({} when it has none)."""
        if not self.config or not self.config.exists():
            return {}
        return parse_config(self.config.read_text(errors="replace"))

    def describe(self) -> dict:
        return {"name": self.name, "release": self.release, "bzimage": str(self.bzimage),
                "arch": self.arch, "package": self.package, "version": self.version,
                **({"kexec_image": str(self.kexec_image)} if self.kexec_image else {}),
                **({"recipe": self.recipe} if self.recipe else {})}


def bzimage_release(path: Path) -> str | None:
    """The release string a bzImage carries in its setup header, or None if it is not one."""
    with open(path, "rb") as f:
        head = f.read(0x8000)
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        return None
    pointer = int.from_bytes(head[0x20E:0x210], "little") + 0x200
    text = head[pointer:pointer + 256].split(b"\0", 1)[0].decode("ascii", "replace")
    return text.split(" ", 1)[0] or None
