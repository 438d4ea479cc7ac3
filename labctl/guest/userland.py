"""Guest userspace for an architecture other than the host's: busybox and kexec-tools
from Debian's archive for that architecture, unpacked into the cache.

Debian 12 ships busybox-static and kexec-tools for arm64 (`dpkg --add-architecture
arm64`, then `apt-get download`; no root needed once the lists exist).  Its kexec
is dynamically linked (libc, zlib and Xen's libxenctrl), so the libraries it needs
are found by walking DT_NEEDED with pyelftools inside the unpacked packages and
carried in the initramfs at their own paths.  riscv64 has no Debian 12 port: its
guests run the helper as PID 1 and have no kexec-tools (see labctl/config/arch.py).
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path, PurePosixPath

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from labctl.config.arch import Arch
from labctl.errors import InfraError
from labctl.kernel.debian import download_and_unpack, offered_versions

BUSYBOX_PACKAGE = "busybox-static"
# kexec-tools and the packages holding the libraries its kexec loads (DT_NEEDED closure
# of kexec-tools 1:2.0.25-3+deb12u3: libxenctrl from libxenmisc4.17 and what that needs).
KEXEC_TOOLS_PACKAGES = ("kexec-tools", "libc6", "zlib1g", "libxenmisc4.17", "libxentoollog1",
                        "libxencall1", "libxenevtchn1", "libxengnttab1",
                        "libxenforeignmemory1", "libxendevicemodel1", "libxentoolcore1")
KEXEC_BINARY = "sbin/kexec"
MAX_LINKS = 16


def _foreign_architectures() -> list[str]:
    proc = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True)
    return proc.stdout.split()


@functools.lru_cache(maxsize=None)
def archive_versions(arch: Arch, packages: tuple[str, ...]) -> dict[str, str]:
    """The version the archive offers of each package for the guest's architecture (one
    apt-cache call: it takes seconds each on a loaded host)."""
    if arch.debian_arch not in _foreign_architectures():
        raise InfraError(f"{arch.name} guests need Debian packages for {arch.debian_arch}: run "
                         f"'dpkg --add-architecture {arch.debian_arch} && apt-get update' as root")
    versions = offered_versions([f"{p}:{arch.debian_arch}" for p in packages])
    missing = [p for p in packages if p not in versions]
    if missing:
        raise InfraError(f"the package archive has no {arch.debian_arch} {', '.join(missing)}: "
                         "run 'apt-get update' (as root) and try again")
    return versions


def package_tree(arch: Arch, package: str, version: str, cache_dir: Path, progress=print) -> Path:
    """One Debian package of the guest's architecture, unpacked (cached per version)."""
    assert arch.debian_arch, f"{arch.name} has no Debian port"
    qualified = f"{package}:{arch.debian_arch}"
    dest = cache_dir / "debs" / arch.debian_arch / f"{package}_{version}"
    if not dest.exists():
        progress(f"downloading {qualified} {version} ...")
        download_and_unpack(qualified, version, dest)
    return dest


def resolve(root: Path, path: str) -> Path:
    """`path` inside the unpacked tree `root`, following symlinks inside the tree (an
    absolute link target means the tree's root, never the host's)."""
    parts = list(PurePosixPath(path.lstrip("/")).parts)
    current = PurePosixPath("/")
    for _ in range(MAX_LINKS):
        for i, part in enumerate(parts):
            candidate = current / part
            host = root / str(candidate).lstrip("/")
            if host.is_symlink():
                target = PurePosixPath(str(host.readlink()))
                rest = parts[i + 1:]
                base = PurePosixPath("/") if target.is_absolute() else current
                parts = list((base / target).parts[1:]) + rest
                current = PurePosixPath("/")
                break
            current = candidate
        else:
            return root / str(current).lstrip("/")
    raise InfraError(f"too many symbolic links resolving {path} in {root}")


def _dynamic_needs(data: Path) -> tuple[list[str], str | None]:
    """(DT_NEEDED sonames, PT_INTERP path) of an ELF file."""
    try:
        with open(data, "rb") as f:
            elf = ELFFile(f)
            interp = next((seg.get_interp_name() for seg in elf.iter_segments()
                           if seg["p_type"] == "PT_INTERP"), None)
            needed = [tag.needed for section in elf.iter_sections()
                      if isinstance(section, DynamicSection)
                      for tag in section.iter_tags() if tag.entry.d_tag == "DT_NEEDED"]
    except (ELFError, OSError) as exc:
        raise InfraError(f"cannot read {data} as ELF: {exc}") from None
    return needed, interp


def library_closure(trees: list[Path], program: str, libdirs: tuple[str, ...]) -> dict[str, Path]:
    """Guest path -> host file for `program` and every library it loads, looked up in the
    unpacked trees the way the dynamic loader would (its interpreter, then libdirs)."""
    def find(path: str) -> Path | None:
        for tree in trees:
            found = resolve(tree, path)
            if found.is_file():
                return found
        return None

    files: dict[str, Path] = {}
    pending: list[tuple[str, str | None]] = [("/" + program.lstrip("/"), None)]
    while pending:
        guest, soname = pending.pop()
        host = find(guest) if soname is None else next(
            (f for d in libdirs if (f := find(f"{d}/{soname}"))), None)
        if host is None:
            raise InfraError(f"{soname or guest} not found in {', '.join(map(str, trees))}: "
                             "add the package that ships it to KEXEC_TOOLS_PACKAGES")
        if soname is not None:
            guest = next(f"{d}/{soname}" for d in libdirs if find(f"{d}/{soname}"))
        if guest in files:
            continue
        files[guest] = host
        needed, interp = _dynamic_needs(host)
        if interp and interp not in files:
            pending.append((interp, None))
        pending += [(name, name) for name in needed if not any(g.endswith("/" + name) for g in files)]
    return files


def multiarch_libdirs(arch: Arch) -> tuple[str, ...]:
    triplet = arch.cross_compile.rstrip("-")
    return (f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib")


def busybox(arch: Arch, cache_dir: Path, progress=print) -> Path:
    """busybox-static for the guest's architecture."""
    version = archive_versions(arch, (BUSYBOX_PACKAGE,))[BUSYBOX_PACKAGE]
    path = resolve(package_tree(arch, BUSYBOX_PACKAGE, version, cache_dir, progress), "/bin/busybox")
    if not path.is_file():
        raise InfraError(f"{BUSYBOX_PACKAGE}:{arch.debian_arch} holds no /bin/busybox")
    return path


def kexec_tools(arch: Arch, cache_dir: Path, program: str = KEXEC_BINARY,
                progress=print) -> dict[str, Path]:
    """A program of kexec-tools for the guest's architecture (kexec, or vmcore-dmesg) with
    the libraries it loads."""
    versions = archive_versions(arch, KEXEC_TOOLS_PACKAGES)
    trees = [package_tree(arch, p, versions[p], cache_dir, progress) for p in KEXEC_TOOLS_PACKAGES]
    return library_closure(trees, program, multiarch_libdirs(arch))
