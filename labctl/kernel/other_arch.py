"""`--kernel PATH --arch A` for architectures other than the host's: check that the file
is the image that architecture's kexec_file_load takes, and find its release.

arm64 loads the uncompressed Image (arch/arm64/kernel/kexec_image.c checks the
"ARM\\x64" magic at offset 0x38); riscv64 in 6.12 loads only an ELF vmlinux
(arch/riscv/kernel/kexec_elf.c), which QEMU's virt boots as it is, though the
flat Image beside it in a build tree (arch/riscv/boot/Image) is preferred.
"""

from __future__ import annotations

import re
from pathlib import Path

from labctl.config.arch import get_arch
from labctl.errors import ConfigError, InfraError
from labctl.kernel.image import Kernel

ARM64_MAGIC_OFFSET, ARM64_MAGIC = 0x38, b"ARM\x64"
ELF_MAGIC = b"\x7fELF\x02\x01"  # 64-bit little-endian
EM_RISCV = 243
BANNER = re.compile(rb"Linux version (\S+) \(")
SCAN_LIMIT = 256 << 20


def image_release(path: Path) -> str:
    """The release from the `Linux version` banner an uncompressed image carries."""
    data = path.read_bytes()[:SCAN_LIMIT]
    m = BANNER.search(data)
    return m[1].decode("ascii", "replace") if m else "unknown"


def _config_beside(path: Path, release: str) -> Path | None:
    candidates = (path.with_name(f"config-{release}"), path.parent / "config", path.parent / ".config",
                  *(p / ".config" for p in path.parents[:4]))
    return next((c for c in candidates if c.is_file()), None)


def foreign_path_kernel(name: str, path: Path, arch: str) -> Kernel:
    head = path.read_bytes()[:64]
    if arch == "arm64":
        if head[ARM64_MAGIC_OFFSET:ARM64_MAGIC_OFFSET + 4] != ARM64_MAGIC:
            raise ConfigError(f"{path} is not an arm64 Image (no ARM\\x64 magic at 0x38): "
                              "kexec_file_load on arm64 takes the uncompressed Image only")
        boot = path
    elif arch == "riscv64":
        if not head.startswith(ELF_MAGIC) or int.from_bytes(head[18:20], "little") != EM_RISCV:
            raise ConfigError(f"{path} is not a riscv64 ELF vmlinux: kexec_file_load on riscv64 "
                              "(6.12) takes an ELF image only")
        flat = next((p for p in (path.parent / "arch/riscv/boot/Image", path.with_name("Image"))
                     if p.is_file()), None)
        boot = flat or path
    else:
        raise ConfigError(f"--arch {arch}: no path kernels for this architecture")
    release = image_release(path)
    return Kernel(name=name, bzimage=boot.resolve(), release=release,
                  config=_config_beside(path, release), arch=arch, kexec_image=path.resolve())


# Loaded in this order by guests/init (insmod needs each one's dependencies first).
CONTROL_PORT_MODULES = (("virtio_ring", "CONFIG_VIRTIO"), ("virtio", "CONFIG_VIRTIO"),
                        ("virtio_mmio", "CONFIG_VIRTIO_MMIO"), ("virtio_console", "CONFIG_VIRTIO_CONSOLE"))


def control_port_modules(kernel: Kernel) -> tuple[tuple[str, Path], ...]:
    """(guest name, .ko) of the virtio-console stack where a kernel builds it as modules
    (Debian's arm64 cloud kernel: VIRTIO_CONSOLE=m), in load order; guests/init loads
    them before the helper opens hvc0.  Built-in (the recipes): nothing to load."""
    if not get_arch(kernel.arch).virtio_control:
        return ()
    symbols = kernel.config_symbols()
    wanted = [name for name, symbol in CONTROL_PORT_MODULES if symbols.get(symbol) == "m"]
    if not wanted:
        return ()
    if kernel.modules_dir is None:
        raise InfraError(f"{kernel.name} builds {', '.join(wanted)} as modules, but its "
                         "lib/modules directory is missing")
    found = {p.name.removesuffix(".ko"): p for p in kernel.modules_dir.rglob("*.ko")}
    missing = [name for name in wanted if name not in found]
    if missing:
        raise InfraError(f"{kernel.name}: {', '.join(missing)}.ko not in {kernel.modules_dir} "
                         "(compressed modules are not supported)")
    return tuple((f"{i:02d}-{name}.ko", found[name]) for i, name in enumerate(wanted, 1))
