"""Guest assets: the static helper and the initramfs, built once and cached by content hash.

The capture initramfs holds busybox, the helper and init.  The primary
initramfs is the capture one plus a second archive carrying the capture
kernel and the capture initramfs under /boot, which the helper hands to
kexec_file_load.  Both are deterministic, so their hash is their identity.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from labctl.config.arch import HOST, Arch
from labctl.errors import ConfigError, InfraError
from labctl.guest import userland
from labctl.guest.cpio import CpioWriter, regular_files
from labctl.kernel import signing
from labctl.kernel.load_images import BAD_IMAGES, SIGNED_IMAGES, bad_image, guest_path
from labctl.tools import run_tool

GUESTS_DIR = Path(__file__).resolve().parents[2] / "guests"
HELPER_SOURCE = GUESTS_DIR / "helper" / "kexec-lab-helper.c"
INIT_SCRIPT = GUESTS_DIR / "init"
BUSYBOX = Path("/bin/busybox")
KEXEC_TOOL = Path("/sbin/kexec")
# kexec-tools' reader of the crashed kernel's log, for the dump check (dump_check.py)
VMCORE_DMESG = Path("/sbin/vmcore-dmesg")
# --save-vmcore: the filtered, compressed dump is written by makedumpfile (vmcore_save.py)
MAKEDUMPFILE = Path("/usr/bin/makedumpfile")
GUEST_KERNEL = "/boot/vmlinuz"
GUEST_INITRD = "/boot/initrd.img"
GUEST_HELPER = "/bin/kexec-lab-helper"
TOOL_SECONDS = 60.0
COMPILE_SECONDS = 300.0  # gcc -static of the guest helper on a loaded host
# -s: stripped, 88 KB (10%) less for purgatory to hash and every capture kernel to unpack
HELPER_FLAGS = ("-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror")
MANIFEST = "etc/kexec-lab.sha256"  # what the capture initramfs holds (manifest_bytes)


@dataclass(frozen=True)
class GuestAssets:
    primary_initramfs: Path
    capture_initramfs: Path
    helper: Path
    images: dict | None = None  # image kind -> its signatures (and the tampered byte)


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
    return run_tool([cc, "--version"], "asking the C compiler its version (install gcc and "
                    "libc6-dev)", TOOL_SECONDS, text=False).stdout


def build_helper(cache: Path, cc: str = "gcc") -> Path:
    """Compile the static guest helper, or reuse the cached build of the same source
    (cc: the guest architecture's compiler, e.g. aarch64-linux-gnu-gcc)."""
    source = HELPER_SOURCE.read_bytes()
    prefix = "" if cc == "gcc" else f"{cc.removesuffix('gcc').rstrip('-')}-"
    out = cache / f"kexec-lab-helper-{prefix}{_digest(source, _compiler_identity(cc), ' '.join(HELPER_FLAGS).encode())}"
    if out.exists():
        return out
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    argv = [cc, *HELPER_FLAGS, "-o", str(tmp), str(HELPER_SOURCE)]
    run_tool(argv, "building the guest helper (static linking needs libc6-dev's libc.a)",
             COMPILE_SECONDS)
    os.replace(tmp, out)
    return out


def _busybox_applets(busybox: Path) -> list[str]:
    proc = run_tool([str(busybox), "--list"], "listing busybox's applets (install busybox-static)",
                    TOOL_SECONDS)
    return sorted(set(proc.stdout.split()) - {"busybox"})


def capture_initramfs_bytes(busybox: bytes | None, applets: list[str], helper: bytes,
                            init: bytes | None) -> bytes:
    """The base initramfs: enough userspace for the helper and a shell.  Without busybox
    (an architecture Debian 12 has no port for) the helper itself is /init."""
    cpio = CpioWriter()
    for d in ("bin", "dev", "proc", "sys", "boot", "tmp", "root"):
        cpio.directory(d)
    cpio.char_device("dev/console", 5, 1)
    if busybox is not None:
        cpio.file("bin/busybox", busybox, 0o755)
        for applet in applets:
            cpio.symlink(f"bin/{applet}", "busybox")
    cpio.file(GUEST_HELPER, helper, 0o755)
    if init is not None:
        cpio.file("init", init, 0o755)
    else:
        cpio.symlink("init", GUEST_HELPER.lstrip("/"))
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


def manifest_layer_bytes(archive: bytes) -> bytes:
    """/etc/kexec-lab.sha256 listing every regular file of the capture initramfs."""
    cpio = CpioWriter()
    cpio.directory("etc")
    cpio.file(MANIFEST, manifest_bytes(regular_files(archive)))
    return cpio.getvalue()


def manifest_bytes(files: dict[str, bytes]) -> bytes:
    """`sha256sum -c` input for the capture initramfs: guests/init checks what the capture
    kernel unpacked against it and says on the console which files differ (a corrupted
    initrd that purgatory let through), so the lab need not wait for a helper that may
    never run."""
    return "".join(f"{hashlib.sha256(data).hexdigest()}  /{name.lstrip('/')}\n"
                   for name, data in sorted(files.items())).encode()


def _shared_libraries(program: Path) -> list[Path]:
    """The shared objects a dynamic program loads (ldd), interpreter included."""
    proc = run_tool(["ldd", str(program)], f"listing {program}'s shared libraries", TOOL_SECONDS,
                    check=False)
    if proc.returncode != 0:
        return []
    libs = []
    for line in proc.stdout.splitlines():
        path = line.split("=>")[-1].split("(")[0].strip()
        if path.startswith("/"):
            libs.append(Path(path))
    return libs


def tools_layer_bytes(program: Path = KEXEC_TOOL) -> bytes:
    """A host program at the same path in the guest, with the libraries it needs:
    kexec-tools for the legacy kexec_load(2) path, vmcore-dmesg for the dump check."""
    if not program.exists():
        package = "makedumpfile" if program == MAKEDUMPFILE else "kexec-tools"
        raise InfraError(f"{program} not found: install {package}")
    files = [program, *_shared_libraries(program)]
    return _files_layer({str(path): path for path in files})


def _files_layer(files: dict[str, Path]) -> bytes:
    """An archive holding host files at guest paths, with their directories."""
    cpio = CpioWriter()
    guest = [Path(g) for g in files]
    for directory in sorted({str(p) for g in guest for p in g.parents if str(p) != "/"}):
        cpio.directory(directory)
    for path, host in files.items():
        cpio.file(path, host.read_bytes(), 0o755)
    return cpio.getvalue()


@dataclass(frozen=True)
class Userland:
    """What the guest runs besides the helper, for its architecture."""

    busybox: bytes | None  # None: the helper is /init (no Debian port, riscv64)
    applets: list[str]
    init: bytes | None
    tools: bytes  # kexec-tools layer (primary initramfs)
    dump: bytes  # vmcore-dmesg (and makedumpfile) layer (capture initramfs)


def _userland(arch: Arch, cache_dir: Path, dump_tools: bool) -> Userland:
    """The host's own busybox lists its applets; a foreign one cannot run here, so only
    `sh` is linked and guests/init links the rest in the guest (busybox --install).
    Another architecture's kexec-tools and vmcore-dmesg come from Debian's archive for it;
    an architecture without a Debian port has neither, and the helper is /init."""
    if arch is HOST:
        busybox = _require_busybox()
        dump = tools_layer_bytes(VMCORE_DMESG)
        if dump_tools:
            dump += tools_layer_bytes(MAKEDUMPFILE)
        return Userland(busybox.read_bytes(), _busybox_applets(busybox), INIT_SCRIPT.read_bytes(),
                        tools_layer_bytes(), dump)
    if dump_tools:
        raise ConfigError(f"--save-vmcore needs makedumpfile in the {arch.name} guest, which the "
                          "lab does not carry yet")
    if arch.debian_arch is None:
        return Userland(None, [], None, b"", b"")
    return Userland(userland.busybox(arch, cache_dir).read_bytes(), ["sh"],
                    INIT_SCRIPT.read_bytes(),
                    _files_layer(userland.kexec_tools(arch, cache_dir)),
                    _files_layer(userland.kexec_tools(arch, cache_dir, str(VMCORE_DMESG))))


def modules_layer_bytes(modules: tuple[tuple[str, Path], ...]) -> bytes:
    """Kernel modules guests/init loads at boot, in name order (/lib/modules/NN-name.ko, or
    /lib/modules/RELEASE/NN-name.ko with two kernels in the guest: pair/reboot.py)."""
    cpio = CpioWriter()
    releases = sorted({name.rpartition("/")[0] for name, _ in modules} - {""})
    for directory in ("lib", "lib/modules", *(f"lib/modules/{r}" for r in releases)):
        cpio.directory(directory)
    for name, path in modules:
        cpio.file(f"lib/modules/{name}", path.read_bytes(), 0o644)
    return cpio.getvalue()


def bad_images_layer_bytes(bzimage: bytes) -> bytes:
    cpio = CpioWriter()
    cpio.directory("boot/bad")
    for kind in BAD_IMAGES:
        cpio.file(guest_path(kind), bad_image(kind, bzimage))
    return cpio.getvalue()


def signed_images_layer_bytes(bzimage: bytes, cache_dir: Path) -> tuple[bytes, dict]:
    """The signature image kinds under /boot/sig, and what each one carries."""
    cpio = CpioWriter()
    facts: dict[str, dict] = {}
    cpio.directory("boot/sig")
    for kind in SIGNED_IMAGES:
        image = signing.signed_image(kind, bzimage, cache_dir)
        cpio.file(guest_path(kind), image)
        facts[kind] = {"signatures": signing.signatures(image)}
        if not signing.is_pe(bzimage):
            facts[kind]["note"] = signing.NOT_PE
        if kind == "tampered":
            facts[kind]["tampered_offset"] = hex(signing.tamper(image)[1])
    return cpio.getvalue(), facts


def build_assets(cache_dir: Path, capture_kernel: Path, bad_images: bool = False,
                 signed_images: bool = False, sign_default: bool = False,
                 dump_tools: bool = False, arch: Arch = HOST,
                 modules: tuple[tuple[str, Path], ...] = ()) -> GuestAssets:
    """Build (or reuse) the helper and both initramfs images for one capture kernel.

    The capture initramfs carries vmcore-dmesg (and libc) to read the crashed
    kernel's log out of /proc/vmcore, and with dump_tools (--save-vmcore) makedumpfile,
    left out otherwise because purgatory hashes every byte of the initrd on each crash.
    The primary initramfs is the capture one plus layers: the capture kernel
    and initramfs under /boot, kexec-tools, and (only when a scenario loads
    one, since the vmlinux is large) the bad images under /boot/bad, or the
    signature images under /boot/sig (signing.py).  sign_default: /boot/vmlinuz
    is signed with the lab key (for a kernel that trusts it).  Everything is built
    for the guest's architecture (labctl/config/arch.py); modules: kernel modules the guest
    loads at boot (arch_kernels.control_port_modules).
    """
    if (bad_images or signed_images or sign_default) and arch is not HOST:
        raise ConfigError(f"the bad and signed images are made from an {HOST.name} bzImage; "
                          f"there are none for {arch.name} guests yet", key=("load", "kernel"))
    cache = cache_dir / "assets"
    cache.mkdir(parents=True, exist_ok=True)
    helper = build_helper(cache, arch.cc)
    user = _userland(arch, cache_dir, dump_tools)
    helper_bytes = helper.read_bytes()
    dump_layer = user.dump + (modules_layer_bytes(modules) if modules else b"")
    base_key = _digest(user.busybox or b"", helper_bytes, user.init or b"",
                       "\n".join(user.applets).encode(), dump_layer)
    capture = cache / f"capture-{base_key}.cpio"
    if not capture.exists():
        archive = capture_initramfs_bytes(user.busybox, user.applets, helper_bytes,
                                          user.init) + dump_layer
        _atomic_write(capture, archive + manifest_layer_bytes(archive))
    kernel_bytes = Path(capture_kernel).read_bytes()
    tools = user.tools
    signing_parts = []
    if signed_images or sign_default:
        keys = "".join(signing.key_pair(cache_dir, n).fingerprint() for n in signing.KEY_NAMES)
        signing_parts = [keys.encode(), b"sig" if signed_images else b"", b"signed-default"
                         if sign_default else b""]
    key = _digest(base_key.encode(), kernel_bytes, tools, b"bad" if bad_images else b"",
                  *signing_parts)
    primary = cache / f"primary-{key}.cpio"
    manifest = primary.with_suffix(".json")
    if not primary.exists() or not manifest.exists():
        base = capture.read_bytes()
        sign_default = sign_default and signing.is_pe(kernel_bytes)
        default = signing.sign(kernel_bytes, signing.key_pair(cache_dir, "lab")) if sign_default \
            else kernel_bytes
        layers = [base, boot_payload_bytes(default, base), tools]
        images = {"default": {"signatures": _signatures_or_none(default),
                              "signed_by_the_lab": sign_default}}
        if bad_images:
            layers.append(bad_images_layer_bytes(kernel_bytes))
        if signed_images:
            layer, facts = signed_images_layer_bytes(kernel_bytes, cache_dir)
            layers.append(layer)
            images.update(facts)
        _atomic_write(primary, b"".join(layers))
        _atomic_write(manifest, (json.dumps(images, indent=2) + "\n").encode())
    return GuestAssets(primary_initramfs=primary, capture_initramfs=capture, helper=helper,
                       images=json.loads(manifest.read_text()))


def _signatures_or_none(image: bytes) -> list[str] | None:
    """The default image's signatures for the evidence; None when sbsigntool is missing."""
    try:
        return signing.signatures(image)
    except FileNotFoundError:
        return None
