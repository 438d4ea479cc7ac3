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
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from labctl.config import KernelEntry, LabConfig, key_error
from labctl.errors import ConfigError, InfraError

VERSIONED_IMAGE = re.compile(r"^linux-image-\d+\.\d+\.\d+")  # not 6.12-cloud-amd64
PACKAGE_PINS_ENV = "KEXEC_LAB_PACKAGE_PINS"


@dataclass(frozen=True)
class Kernel:
    """A kernel ready to boot, and what is known about it."""

    name: str
    bzimage: Path
    release: str
    package: str | None = None
    version: str | None = None
    config: Path | None = None
    recipe: dict | None = None  # recipe kernels: build key, source, patches (kernel_build.py)

    def config_symbols(self) -> dict[str, str]:
        """CONFIG_* values from the kernel's config file ({} when it has none)."""
        if not self.config or not self.config.exists():
            return {}
        from labctl.kernel_facts import parse_config  # kernel_facts imports config, as we do

        return parse_config(self.config.read_text(errors="replace"))

    def describe(self) -> dict:
        return {"name": self.name, "release": self.release, "bzimage": str(self.bzimage),
                "package": self.package, "version": self.version,
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


# ------------------------------------------------------------------ apt

def _apt_show(package: str) -> dict[str, str]:
    proc = subprocess.run(["apt-cache", "show", "--no-all-versions", package],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise InfraError(f"the package archive does not know {package!r}: "
                         "run 'apt-get update' (as root) and try again")
    fields, key = {}, None
    for line in proc.stdout.splitlines():
        if line[:1].isspace() and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    return fields


def resolve_package(package: str) -> tuple[str, str]:
    """Follow metapackages to the versioned linux-image package: (name, version).

    `labctl matrix` resolves once and pins the answer for its pairs in
    $KEXEC_LAB_PACKAGE_PINS (JSON {package: [name, version]}): every pair of a run
    tests the same version even if the archive moves, and skips apt-cache."""
    if pinned := json.loads(os.environ.get(PACKAGE_PINS_ENV) or "{}").get(package):
        return pinned[0], pinned[1]
    name = package
    for _ in range(4):
        fields = _apt_show(name)
        if VERSIONED_IMAGE.match(name):
            return name, fields["Version"]
        deps = [alt.strip().split(" ", 1)[0]
                for dep in fields.get("Depends", "").split(",") for alt in dep.split("|")]
        images = [d for d in deps if d.startswith("linux-image-")]
        if not images:
            raise InfraError(f"{name!r} is neither a versioned linux-image package nor depends on one")
        name = images[0]
    raise InfraError(f"{package!r}: too many levels of metapackages")


def _download_and_unpack(package: str, version: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".unpack-") as tmp:
        argv = ["apt-get", "download", f"{package}={version}"]
        if os.geteuid() == 0:
            argv[1:1] = ["-o", "APT::Sandbox::User=root"]
        proc = subprocess.run(argv, cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or not debs:
            raise InfraError(f"'{' '.join(argv)}' failed: {proc.stderr.strip()[-500:]}")
        tree = Path(tmp) / "tree"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tree)], check=True, capture_output=True)
        (tree / "package").write_text(f"{package} {version}\n")
        os.replace(tree, dest)


def debian_kernel(entry: KernelEntry, cache_dir: Path, progress=print) -> Kernel:
    package, version = resolve_package(entry.debian_package)
    dest = cache_dir / "kernels" / f"{package}_{version}"
    if not dest.exists():
        progress(f"downloading {package} {version} ...")
        _download_and_unpack(package, version, dest)
    images = sorted((dest / "boot").glob("vmlinuz-*"))
    if not images:
        raise InfraError(f"{package} {version} holds no /boot/vmlinuz-*")
    release = images[0].name[len("vmlinuz-"):]
    config = dest / "boot" / f"config-{release}"
    return Kernel(name=entry.name, bzimage=images[0], release=release, package=package,
                  version=version, config=config if config.exists() else None)


def path_kernel(name: str, path: Path) -> Kernel:
    if not path.is_file():
        raise ConfigError(f"kernel image not found: {path}")
    release = bzimage_release(path) or "unknown"
    config = next((c for c in (path.with_name(f"config-{release}"), path.parent / "config",
                               path.parents[min(3, len(path.parents) - 1)] / ".config")
                   if c.is_file()), None)
    return Kernel(name=name, bzimage=path.resolve(), release=release, config=config)


def resolve_kernel(lab: LabConfig, name_or_path: str | None, progress=print) -> Kernel:
    """--kernel NAME-or-PATH: a catalogue name, else a path to a bzImage."""
    name = name_or_path or lab.default_kernel
    entry = lab.kernels.get(name)
    if entry is None:
        if os.sep in name or Path(name).exists():
            path = Path(name)
            return path_kernel(path.name, path)
        raise ConfigError(f"unknown kernel {name!r}: not in the catalogue of {lab.path} "
                          f"({', '.join(sorted(lab.kernels))}) and not a file")
    if entry.path:
        path = (lab.path.parent / entry.path).resolve()
        if not path.is_file():
            raise key_error(lab.path, ("kernels", name, "path"), f"kernel image not found: {path}")
        return path_kernel(entry.name, path)
    if entry.recipe:
        from labctl.kernel_build import recipe_kernel  # kernel_build imports this module

        return recipe_kernel(lab, entry)
    if not shutil.which("apt-cache"):
        raise InfraError("apt-cache not found: Debian kernels need apt (or give --kernel PATH)")
    return debian_kernel(entry, lab.cache_dir, progress)
