"""Guest assets: the static helper and the initramfs, built once and cached by content hash.

The capture initramfs holds busybox, the helper and init.  The primary
initramfs is the capture one plus a second archive carrying the capture
kernel and the capture initramfs under /boot, which the helper hands to
kexec_file_load.  Both are deterministic, so their hash is their identity.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from labctl.cpio import CpioWriter
from labctl.errors import InfraError

GUESTS_DIR = Path(__file__).resolve().parent.parent / "guests"
HELPER_SOURCE = GUESTS_DIR / "helper" / "kexec-lab-helper.c"
INIT_SCRIPT = GUESTS_DIR / "init"
BUSYBOX = Path("/bin/busybox")
GUEST_KERNEL = "/boot/vmlinuz"
GUEST_INITRD = "/boot/initrd.img"
GUEST_HELPER = "/bin/kexec-lab-helper"


@dataclass(frozen=True)
class GuestAssets:
    primary_initramfs: Path
    capture_initramfs: Path
    helper: Path


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _compiler_identity(cc: str) -> bytes:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise InfraError(f"C compiler {cc!r} not usable ({exc}); install gcc and libc6-dev") from None


def build_helper(cache: Path, cc: str = "gcc") -> Path:
    """Compile the static guest helper, or reuse the cached build of the same source."""
    source = HELPER_SOURCE.read_bytes()
    out = cache / f"kexec-lab-helper-{_digest(source, _compiler_identity(cc))}"
    if out.exists():
        return out
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    argv = [cc, "-static", "-Os", "-Wall", "-Wextra", "-Werror", "-o", str(tmp), str(HELPER_SOURCE)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise InfraError(f"building the guest helper failed: {' '.join(argv)}\n{proc.stderr.strip()}"
                         "\n(is libc6-dev installed? static linking needs libc.a)")
    os.replace(tmp, out)
    return out


def _busybox_applets(busybox: Path) -> list[str]:
    proc = subprocess.run([str(busybox), "--list"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InfraError(f"{busybox} --list failed; install busybox-static")
    return sorted(set(proc.stdout.split()) - {"busybox"})


def capture_initramfs_bytes(busybox: bytes, applets: list[str], helper: bytes, init: bytes) -> bytes:
    """The base initramfs: enough userspace for the helper and a shell."""
    cpio = CpioWriter()
    for d in ("bin", "dev", "proc", "sys", "boot", "tmp", "root"):
        cpio.directory(d)
    cpio.char_device("dev/console", 5, 1)
    cpio.file("bin/busybox", busybox, 0o755)
    for applet in applets:
        cpio.symlink(f"bin/{applet}", "busybox")
    cpio.file(GUEST_HELPER, helper, 0o755)
    cpio.file("init", init, 0o755)
    return cpio.getvalue()


def boot_payload_bytes(kernel: bytes, initrd: bytes) -> bytes:
    """The archive appended for the primary kernel: what it will kexec into."""
    cpio = CpioWriter()
    cpio.file(GUEST_KERNEL, kernel)
    cpio.file(GUEST_INITRD, initrd)
    return cpio.getvalue()


def _require_busybox() -> Path:
    if not BUSYBOX.exists() or not os.access(BUSYBOX, os.X_OK):
        raise InfraError(f"{BUSYBOX} not found: install busybox-static (apt-get install busybox-static)")
    return BUSYBOX


def build_assets(cache_dir: Path, capture_kernel: Path) -> GuestAssets:
    """Build (or reuse) the helper and both initramfs images for one capture kernel."""
    cache = cache_dir / "assets"
    cache.mkdir(parents=True, exist_ok=True)
    helper = build_helper(cache)
    busybox = _require_busybox()
    busybox_bytes = busybox.read_bytes()
    helper_bytes = helper.read_bytes()
    init_bytes = INIT_SCRIPT.read_bytes()
    applets = _busybox_applets(busybox)
    base_key = _digest(busybox_bytes, helper_bytes, init_bytes, "\n".join(applets).encode())
    capture = cache / f"capture-{base_key}.cpio"
    if not capture.exists():
        _atomic_write(capture, capture_initramfs_bytes(busybox_bytes, applets, helper_bytes, init_bytes))
    kernel_bytes = Path(capture_kernel).read_bytes()
    primary = cache / f"primary-{_digest(base_key.encode(), kernel_bytes)}.cpio"
    if not primary.exists():
        base = capture.read_bytes()
        _atomic_write(primary, base + boot_payload_bytes(kernel_bytes, base))
    return GuestAssets(primary_initramfs=primary, capture_initramfs=capture, helper=helper)

