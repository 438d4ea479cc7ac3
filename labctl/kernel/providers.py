"""Kernel providers: turn a catalogue entry (or a --kernel path) into a bootable bzImage.

Debian entries name a package, often a metapackage; it is resolved to the
versioned linux-image package the archive offers today, downloaded with
`apt-get download` and unpacked with `dpkg-deb -x` into the cache, once per
version.  The resolved package and version are recorded in every result.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from labctl.config.arch import HOST, get_arch
from labctl.config.schema import KernelEntry, LabConfig, key_error
from labctl.errors import ConfigError, InfraError
from labctl.kernel.build import recipe_kernel
from labctl.kernel.debian import apt_show, download_and_unpack, package_dir
from labctl.kernel.image import Kernel, bzimage_release

VERSIONED_IMAGE = re.compile(r"^linux-image-\d+\.\d+\.\d+")  # not 6.12-cloud-amd64
PACKAGE_PINS_ENV = "KEXEC_LAB_PACKAGE_PINS"


# ------------------------------------------------------------------ Debian kernels

def resolve_package(package: str) -> tuple[str, str]:
    """Follow metapackages to the versioned linux-image package: (name, version).

    `labctl matrix` resolves once and pins the answer for its pairs in
    $KEXEC_LAB_PACKAGE_PINS (JSON {package: [name, version]}): every pair of a run
    tests the same version even if the archive moves, and skips apt-cache."""
    if pinned := json.loads(os.environ.get(PACKAGE_PINS_ENV) or "{}").get(package):
        return pinned[0], pinned[1]
    name = package
    for _ in range(4):
        fields = apt_show(name)
        if VERSIONED_IMAGE.match(name):
            return name, fields["Version"]
        deps = [alt.strip().split(" ", 1)[0]
                for dep in fields.get("Depends", "").split(",") for alt in dep.split("|")]
        images = [d for d in deps if d.startswith("linux-image-")]
        if not images:
            raise InfraError(f"{name!r} is neither a versioned linux-image package nor depends on one")
        name = images[0]
    raise InfraError(f"{package!r}: too many levels of metapackages")


def cached_debian_kernel(name: str, cache_dir: Path, package: str, version: str,
                         arch: str | None = None) -> Kernel | None:
    """The Kernel of an unpacked linux-image package in the cache, or None if it is not there."""
    images = sorted((package_dir(cache_dir / "kernels", package, version) / "boot").glob("vmlinuz-*"))
    if not images:
        return None
    release = images[0].name[len("vmlinuz-"):]
    config = images[0].with_name(f"config-{release}")
    return Kernel(name=name, bzimage=images[0], release=release, package=package,
                  version=version, config=config if config.exists() else None,
                  arch=arch or HOST.name)


def debian_kernel(entry: KernelEntry, cache_dir: Path, progress=print) -> Kernel:
    assert entry.debian_package, "a Debian entry"
    package, version = resolve_package(entry.debian_package)
    dest = package_dir(cache_dir / "kernels", package, version)
    if not dest.exists():
        progress(f"downloading {package} {version} ...")
        # another architecture's package (arm64) is named with it for apt-get download
        foreign = get_arch(entry.arch)
        download_and_unpack(package if foreign is HOST else f"{package}:{foreign.debian_arch}",
                            version, dest)
    kernel = cached_debian_kernel(entry.name, cache_dir, package, version, entry.arch)
    if kernel is None:
        raise InfraError(f"{package} {version} holds no /boot/vmlinuz-*")
    return kernel


def path_kernel(name: str, path: Path, arch: str | None = None) -> Kernel:
    if not path.is_file():
        raise ConfigError(f"kernel image not found: {path}")
    if arch not in (None, HOST.name):  # kernel/other_arch.py: an arm64 Image, a riscv64 vmlinux
        from labctl.kernel.other_arch import foreign_path_kernel  # it imports this module

        return foreign_path_kernel(name, path, arch)
    release = bzimage_release(path) or "unknown"
    config = next((c for c in (path.with_name(f"config-{release}"), path.parent / "config",
                               path.parents[min(3, len(path.parents) - 1)] / ".config")
                   if c.is_file()), None)
    return Kernel(name=name, bzimage=path.resolve(), release=release, config=config)


def resolve_kernel(lab: LabConfig, name_or_path: str | None, progress=print,
                   arch: str | None = None) -> Kernel:
    """--kernel NAME-or-PATH: a catalogue name, else a path to a bzImage (or, with
    --arch, an arm64 Image or a riscv64 vmlinux)."""
    name = name_or_path or lab.default_kernel
    entry = lab.kernels.get(name)
    if entry is None:
        if os.sep in name or Path(name).exists():
            path = Path(name)
            return path_kernel(path.name, path, arch)
        raise ConfigError(f"unknown kernel {name!r}: not in the catalogue of {lab.path} "
                          f"({', '.join(sorted(lab.kernels))}) and not a file")
    if entry.path:
        path = (lab.path.parent / entry.path).resolve()
        if not path.is_file():
            raise key_error(lab.path, ("kernels", name, "path"), f"kernel image not found: {path}")
        return path_kernel(entry.name, path, entry.arch)
    if entry.recipe:
        return recipe_kernel(lab, entry)
    if not shutil.which("apt-cache"):
        raise InfraError("apt-cache not found: Debian kernels need apt (or give --kernel PATH)")
    return debian_kernel(entry, lab.cache_dir, progress)
