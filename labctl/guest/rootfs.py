"""A Debian 12 guest with its own kdump stack: a root filesystem image built once, cached.

mmdebstrap installs Debian's packages (systemd, kdump-tools, kexec-tools, makedumpfile,
initramfs-tools, busybox) from the archive the host's apt reaches; the catalogue kernel's
unpacked package (its /boot and /lib/modules, as the kernel cache holds it) is copied in
and set up as its package's postinst would (depmod, then /etc/kernel/postinst.d: the
initramfs for booting and kdump-tools' own capture initramfs).  The Debian cloud kernels
build virtio-blk as a module (CONFIG_VIRTIO_BLK=m; ext4 is built in, virtio-pci too on
6.12 but not on 6.1), so both initramfs images must carry them: initramfs-tools is set to
MODULES=list with virtio_pci and virtio_blk in /etc/initramfs-tools/modules, the smallest
initramfs that mounts the root disk (MODULES=dep would look at the build host's disks).  The lab's own files (fstab,
three small units: guests/debian/) are added, and `mke2fs -d` makes the ext4 image.

The image is keyed by the package list and the versions the archive offers, the kernel
package and the lab's files; it is built in a temporary directory and renamed into place
when complete, so an interrupted or failed build leaves nothing half-made, and a failure
names its step (InfraError: exit 3).  Runs never change it: QEMU opens it snapshot=on.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from labctl.cache_lock import locked
from labctl.config.options import add_common_opts, lab_from_args
from labctl.errors import ConfigError, InfraError
from labctl.kernel.debian import archive_state, offered_versions
from labctl.kernel.image import Kernel
from labctl.kernel.providers import resolve_kernel
from labctl.progress import say

SUITE = "bookworm"
# procps: kdump-config sets its panic sysctls with sysctl (a warning without it)
PACKAGES = ("systemd", "systemd-sysv", "udev", "kmod", "kdump-tools", "kexec-tools", "makedumpfile",
            "initramfs-tools", "busybox", "linux-base", "file", "e2fsprogs", "procps")
VARIANT = "apt"  # Essential: yes packages and apt; the rest is PACKAGES (no Recommends)
FORMAT = 2  # bump when the build steps change what an image holds
GUEST_FILES = Path(__file__).resolve().parents[2] / "guests" / "debian"
IMAGE_MIB = 1024  # a sparse file; about 330 MiB of it is used
DISK = "disk.img"
INITRD = "initrd.img"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class RootfsImage:
    """A built image: the disk, the initramfs to boot it with, and what is in it."""

    directory: Path
    release: str

    @property
    def disk(self) -> Path:
        return self.directory / DISK

    @property
    def initrd(self) -> Path:
        return self.directory / INITRD

    @property
    def manifest(self) -> dict:
        return json.loads((self.directory / MANIFEST).read_text())


class BuildStep:
    """Names the step a build failure happened in."""

    def __init__(self, steps: dict, progress):
        self.steps = steps
        self.progress = progress

    def run(self, name: str, argv: list[str], timeout: float = 1800, **kwargs) -> str:
        self.progress(f"rootfs: {name}")
        start = time.monotonic()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
        except FileNotFoundError:
            raise InfraError(f"rootfs build failed at step '{name}': {argv[0]} not found "
                             "(make setup installs mmdebstrap)") from None
        except subprocess.TimeoutExpired:
            raise InfraError(f"rootfs build failed at step '{name}': no end after {timeout:.0f} s") from None
        self.steps[name] = round(time.monotonic() - start, 1)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
            raise InfraError(f"rootfs build failed at step '{name}' (exit {proc.returncode}): {tail}")
        return proc.stdout


def archive_versions(cache_dir: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """The version the host's package lists offer of each package (what mmdebstrap installs
    from the same archive): one apt-cache call (seconds to tens of seconds on a loaded host),
    remembered per archive state, so a run with the image built asks apt-cache nothing."""
    memo, state = cache_dir / "rootfs" / "versions.json", archive_state()
    try:
        remembered = json.loads(memo.read_text())
        if remembered["archive_state"] == state and remembered["packages"] == list(packages):
            return remembered["versions"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    versions = offered_versions(list(packages))
    if missing := [p for p in packages if p not in versions]:
        raise InfraError(f"rootfs build failed at step 'resolve versions': the package lists know no "
                         f"{', '.join(missing)} (run 'apt-get update' as root)")
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"archive_state": state, "packages": list(packages), "versions": versions}))
    tmp.replace(memo)
    return versions


def guest_files() -> dict[str, bytes]:
    """The lab's files for the image (relative path -> content)."""
    return {str(p.relative_to(GUEST_FILES)): p.read_bytes()
            for p in sorted(GUEST_FILES.rglob("*")) if p.is_file()}


def image_key(kernel: Kernel, versions: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps({
        "format": FORMAT, "suite": SUITE, "variant": VARIANT, "packages": versions,
        "kernel": [kernel.package, kernel.version, kernel.release],
        "files": {k: hashlib.sha256(v).hexdigest() for k, v in guest_files().items()},
    }, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def kernel_tree(kernel: Kernel) -> Path:
    """The unpacked kernel package (boot/, lib/modules/) a Debian kernel came from."""
    if not kernel.package or kernel.arch != "x86_64":
        raise ConfigError(f"userland debian needs an x86_64 Debian-packaged kernel with its "
                          f"modules; {kernel.name} is not one (use debian-6.12 or debian-6.1)",
                          key=("userland",))
    tree = kernel.bzimage.parent.parent
    if not (tree / "lib" / "modules" / kernel.release).is_dir():
        raise InfraError(f"{tree} holds no lib/modules/{kernel.release}")
    return tree


def obtain(kernel: Kernel, cache_dir: Path, progress=print) -> RootfsImage:
    """The cached image for this kernel, built now if missing."""
    tree = kernel_tree(kernel)
    if os.geteuid() != 0:
        raise InfraError("building the Debian root filesystem needs root (mmdebstrap --mode=root "
                         "and chroot): run 'make setup' or 'labctl rootfs build' as root once")
    versions = archive_versions(cache_dir)
    key = image_key(kernel, versions)
    final = cache_dir / "rootfs" / f"debian-{SUITE}-{kernel.release}-{key}"
    if not (final / MANIFEST).exists():
        with locked(final.with_name(final.name + ".lock")):
            if not (final / MANIFEST).exists():
                build(final, kernel, tree, versions, progress)
    return RootfsImage(final, kernel.release)


def build(final: Path, kernel: Kernel, tree: Path, versions: dict[str, str], progress) -> None:
    """Build into a temporary directory next to `final`, rename when complete."""
    staging = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.monotonic()
    steps: dict = {}
    try:
        root = staging / "root"
        step = BuildStep(steps, progress)
        step.run("mmdebstrap", ["mmdebstrap", f"--variant={VARIANT}", "--mode=root",
                                "--aptopt=APT::Install-Recommends \"false\"",
                                f"--include={','.join(PACKAGES)}", SUITE, str(root)])
        install_kernel(step, root, tree, kernel.release)
        add_guest_files(root)
        step.run("initramfs", ["chroot", str(root), "run-parts", "--exit-on-error",
                               f"--arg={kernel.release}", f"--arg=/boot/vmlinuz-{kernel.release}",
                               "/etc/kernel/postinst.d"])
        kdump_ready(root, kernel.release)
        installed = step.run("package list", ["chroot", str(root), "dpkg-query", "-W",
                                              "-f", "${Package} ${Version}\\n"])
        shutil.copyfile(root / "boot" / f"initrd.img-{kernel.release}", staging / INITRD)
        used = sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())
        step.run("mke2fs", ["mke2fs", "-q", "-t", "ext4", "-L", "kexec-lab-root", "-d", str(root),
                            str(staging / DISK), f"{IMAGE_MIB}M"])
        shutil.rmtree(root)
        manifest = {"suite": SUITE, "packages": PACKAGES, "versions": versions,
                    "installed": dict(line.split(" ", 1) for line in installed.splitlines() if " " in line),
                    "kernel": {"package": kernel.package, "version": kernel.version,
                               "release": kernel.release},
                    "files_bytes": used, "image_mib": IMAGE_MIB,
                    "disk_bytes_allocated": (staging / DISK).stat().st_blocks * 512,
                    "build_seconds": round(time.monotonic() - started, 1), "steps": steps}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        staging.rename(final)
        prune(final)
    except OSError as exc:  # the disk filled up, or the cache went away
        raise InfraError(f"rootfs build failed ({exc.strerror}: {exc.filename}); nothing was kept") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress(f"rootfs: built {final.name} in {manifest['build_seconds']} s")


def prune(final: Path) -> None:
    """Images of the same kernel release with another key (older package versions or lab
    files) are superseded: remove them, so that the cache keeps one per kernel (~320 MiB)."""
    prefix = final.name.rsplit("-", 1)[0] + "-"
    for other in final.parent.glob(prefix + "*"):
        if other != final and other.is_dir() and (other / MANIFEST).exists():
            shutil.rmtree(other, ignore_errors=True)
            other.with_name(other.name + ".lock").unlink(missing_ok=True)


def install_kernel(step: BuildStep, root: Path, tree: Path, release: str) -> None:
    """The kernel package's files, as dpkg would unpack them, and its module index."""
    for part in ("boot", "lib/modules"):
        shutil.copytree(tree / part, root / part, symlinks=True, dirs_exist_ok=True)
    step.run("depmod", ["chroot", str(root), "depmod", release])


def add_guest_files(root: Path) -> None:
    """fstab, the lab's units, and initramfs-tools settings (see the module doc)."""
    files = guest_files()
    (root / "etc" / "fstab").write_bytes(files["fstab"])
    (root / "etc" / "hostname").write_text("kexec-lab\n")
    (root / "var" / "crash").mkdir(parents=True, exist_ok=True)
    units = root / "etc" / "systemd" / "system"
    for name in ("kexec-lab-setup", "kexec-lab-report"):
        target = root / "usr" / "local" / "sbin" / name
        target.write_bytes(files[name])
        target.chmod(0o755)
        (units / f"{name}.service").write_bytes(files[f"{name}.service"])
    dropin = units / "kdump-tools.service.d"
    dropin.mkdir(exist_ok=True)
    (dropin / "kexec-lab.conf").write_bytes(files["kdump-tools.service.d/kexec-lab.conf"])
    wants = units / "multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    (wants / "kexec-lab-report.service").symlink_to("/etc/systemd/system/kexec-lab-report.service")
    initramfs = root / "etc" / "initramfs-tools"
    with open(initramfs / "modules", "a") as f:  # 6.1 builds virtio-pci as a module too
        f.write("virtio_pci\nvirtio_blk\n")
    (initramfs / "conf.d" / "kexec-lab").write_text("MODULES=list\nCOMPRESS=gzip\n")


def kdump_ready(root: Path, release: str) -> None:
    """What `kdump-config load` would otherwise redo on every boot (the root disk forgets):
    its record of the sysctl file the capture initramfs was made with, whose absence makes
    it rebuild that initramfs (check_sysctl_change)."""
    kdump = root / "var" / "lib" / "kdump"
    if not (kdump / f"initrd.img-{release}").is_file():
        raise InfraError(f"rootfs build failed at step 'initramfs': kdump-tools made no "
                         f"/var/lib/kdump/initrd.img-{release}")
    shutil.copyfile(root / "etc" / "kdump" / "sysctl.conf", kdump / f"latest_sysctls-{release}")


def cmd_build(args) -> int:
    """labctl rootfs build: the image for each kernel (make setup runs it for the tests)."""
    lab = lab_from_args(args)
    for name in args.names or [lab.default_kernel]:
        kernel = resolve_kernel(lab, name, progress=say)
        image = obtain(kernel, lab.cache_dir, progress=say)
        m = image.manifest
        print(f"{name}: {image.directory} ({m['disk_bytes_allocated'] >> 20} MiB on disk, "
              f"built in {m['build_seconds']} s: {m['steps']})")
    return 0


def register(subparsers) -> None:
    rootfs = subparsers.add_parser("rootfs", help="the Debian guest's root disk (userland: debian)")
    rsub = rootfs.add_subparsers(dest="rootfs_command", required=True)
    build_cmd = rsub.add_parser("build", help="build the Debian 12 root disk for kernels, cached "
                                              "(mmdebstrap; needs root and the Debian archive)")
    build_cmd.add_argument("names", nargs="*", help="catalogue names of Debian kernels "
                                                    "(default: the default kernel)")
    add_common_opts(build_cmd)
    build_cmd.set_defaults(func=cmd_build)
