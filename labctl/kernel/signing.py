"""Signing keys and signed capture images, for kexec_file_load's signature check.

With CONFIG_KEXEC_SIG + CONFIG_KEXEC_BZIMAGE_VERIFY_SIG the kernel checks the
bzImage's PE (Authenticode) signature against its keyrings at load time
(kernel/kexec_file.c kimage_validate_signature, arch/x86/kernel/kexec-bzimage64.c,
crypto/asymmetric_keys/verify_pefile.c).  The lab has two key pairs, made once
with openssl and kept in its cache (never in git; private keys 0600 in 0700
directories): `lab`, which recipe kernels build in through
CONFIG_SYSTEM_TRUSTED_KEYS, and `wrong`, which no kernel trusts.

Image kinds, from one bzImage, with sbsigntool (sbsign, sbattach, sbverify):
- signed: every existing signature removed, then signed with the lab key;
- unsigned: every existing signature removed (Debian's vmlinuz carries Debian's);
- wrong-key: every existing signature removed, then signed with the wrong key;
- tampered: `signed`, then one byte of the signed region changed (the payload
  byte halfway to the signature table), so the Authenticode digest differs.
Existing signatures are removed first because verify_pefile_signature() checks
only the first signature of the table (pefile_strip_sig_wrapper): a lab signature
added after Debian's would never be looked at.  The
`default` image is left as shipped, except on a kernel that trusts the lab key,
where it is `signed` (as a distribution signs its kernels with the key they trust).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from labctl.cache_lock import locked
from labctl.errors import InfraError
from labctl.kernel.load_images import SIGNED_IMAGES, extract_vmlinux

__all__ = ["SIGNED_IMAGES", "KeyPair", "key_pair", "sign", "signed_image", "strip", "tamper",
           "trusted_lab_keys", "verifies"]
KEY_NAMES = {"lab": "kexec-lab signing key", "wrong": "kexec-lab wrong key (trusted by no kernel)"}
KEY_BITS = 2048
CERT_DAYS = 36500
TRUST_FORMAT = 1  # bump when what trust facts record changes
NOT_PE = "not signed: the bzImage is not a PE file (built without CONFIG_EFI_STUB), so it cannot carry a signature"

PE_SIGNATURE = b"PE\0\0"
PE32_PLUS = 0x20B
CERT_TABLE_DIRECTORY = 4  # IMAGE_DIRECTORY_ENTRY_SECURITY
ISSUER = re.compile(r"^\s*-\s*(/.*)$")


@dataclass(frozen=True)
class KeyPair:
    """One of the lab's key pairs in the cache; the certificate is PEM."""

    name: str
    key: Path
    cert: Path

    def der(self) -> bytes:
        """The certificate as the kernel embeds it (certs/system_certificates.S): the PEM
        file's base64 body (read on every run, so no openssl process for it)."""
        try:
            return ssl.PEM_cert_to_DER_cert(self.cert.read_text())
        except (OSError, ValueError) as exc:
            raise InfraError(f"reading {self.cert} failed: {exc}") from None

    def fingerprint(self) -> str:
        return hashlib.sha256(self.der()).hexdigest()


# ------------------------------------------------------------------ keys

def _run(argv: list[str], what: str, data: bytes | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, input=data, capture_output=True)
    except FileNotFoundError:
        raise InfraError(f"{argv[0]} not found: install sbsigntool and openssl") from None
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-500:]
        raise InfraError(f"{what} failed ({argv[0]} exit {proc.returncode}): {err}")
    return proc


def signing_dir(cache_dir: Path) -> Path:
    path = Path(cache_dir) / "signing"
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def key_pair(cache_dir: Path, name: str = "lab") -> KeyPair:
    """The named key pair, made once with openssl: RSA, SHA-256, a self-signed
    code-signing certificate (the usages certs/default_x509.genkey gives the kernel's own)."""
    if name not in KEY_NAMES:
        raise ValueError(f"unknown key {name!r}")
    root = signing_dir(cache_dir)
    pair = KeyPair(name, root / name / "key.pem", root / name / "cert.pem")
    with locked(root / f"{name}.lock"):
        if pair.key.is_file() and pair.cert.is_file():
            return pair
        work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))  # 0700
        _run(["openssl", "req", "-new", "-x509", "-newkey", f"rsa:{KEY_BITS}", "-nodes",
              "-sha256", "-days", str(CERT_DAYS), "-subj", f"/CN={KEY_NAMES[name]}/O=kexec-lab/",
              "-addext", "basicConstraints=critical,CA:FALSE",
              "-addext", "keyUsage=digitalSignature",
              "-addext", "extendedKeyUsage=codeSigning",
              "-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem")],
             f"making the {name} key pair")
        os.chmod(work / "key.pem", 0o600)
        os.replace(work, root / name)
    return pair


# ------------------------------------------------------------------ images

@contextmanager
def _scratch():
    with tempfile.TemporaryDirectory(prefix="kexec-lab-sign-") as tmp:  # 0700
        yield Path(tmp)


def signatures(image: bytes) -> list[str]:
    """The issuers of the image's signatures (sbverify --list), [] when unsigned."""
    with _scratch() as tmp:
        (tmp / "image").write_bytes(image)
        proc = subprocess.run(["sbverify", "--list", str(tmp / "image")], capture_output=True,
                              text=True)
    if proc.returncode != 0:
        return []
    return [m[1] for line in proc.stdout.splitlines() if (m := ISSUER.match(line))]


def strip(image: bytes) -> bytes:
    """The image with every signature removed (sbattach --remove drops the first)."""
    with _scratch() as tmp:
        path = tmp / "image"
        path.write_bytes(image)
        for _ in range(len(signatures(image))):
            _run(["sbattach", "--remove", str(path)], "removing a signature")
        out = path.read_bytes()
    if signatures(out):
        raise InfraError("sbattach left a signature in the image")
    return out


def sign(image: bytes, pair: KeyPair) -> bytes:
    """The image with its own signatures removed, then signed by this key (sbsign)."""
    with _scratch() as tmp:
        (tmp / "image").write_bytes(strip(image))
        _run(["sbsign", "--key", str(pair.key), "--cert", str(pair.cert),
              "--output", str(tmp / "signed"), str(tmp / "image")], f"signing with the {pair.name} key")
        return (tmp / "signed").read_bytes()


def verifies(image: bytes, pair: KeyPair) -> bool:
    """Does sbverify accept the image's signature with this certificate?"""
    with _scratch() as tmp:
        (tmp / "image").write_bytes(image)
        proc = subprocess.run(["sbverify", "--cert", str(pair.cert), str(tmp / "image")],
                              capture_output=True)
    return proc.returncode == 0


def is_pe(image: bytes) -> bool:
    """A bzImage is a PE file only when built with CONFIG_EFI_STUB (arch/x86/boot/header.S)."""
    pe = int.from_bytes(image[0x3C:0x40], "little") if image[:2] == b"MZ" else 0
    return bool(pe) and image[pe:pe + 4] == PE_SIGNATURE


def certificate_table(image: bytes) -> tuple[int, int]:
    """(file offset, size) of the PE attribute certificate table; (0, 0) if none."""
    if image[:2] != b"MZ":
        raise InfraError("not a PE image (no MZ header): a bzImage is one only with CONFIG_EFI_STUB")
    pe = int.from_bytes(image[0x3C:0x40], "little")
    if image[pe:pe + 4] != PE_SIGNATURE:
        raise InfraError("not a PE image (no PE signature at e_lfanew)")
    optional = pe + 24
    magic = int.from_bytes(image[optional:optional + 2], "little")
    directories = optional + (112 if magic == PE32_PLUS else 96)
    entry = directories + 8 * CERT_TABLE_DIRECTORY
    return (int.from_bytes(image[entry:entry + 4], "little"),
            int.from_bytes(image[entry + 4:entry + 8], "little"))


def tamper(signed: bytes) -> tuple[bytes, int]:
    """The signed image with one byte inside its signed region flipped, and where:
    halfway to the certificate table, which is inside the compressed kernel (an image
    that cannot be signed: halfway through it)."""
    table, size = certificate_table(signed) if is_pe(signed) else (len(signed), 0)
    if is_pe(signed) and not size:
        raise InfraError("cannot tamper with a signed image that has no signature")
    offset = table // 2
    out = bytearray(signed)
    out[offset] ^= 0xFF
    return bytes(out), offset


def signed_image(kind: str, bzimage: bytes, cache_dir: Path) -> bytes:
    """The bytes of one signature image kind (see the module docstring).

    A bzImage that is not a PE file cannot carry a signature: every kind is then
    the image as built (tampered still has its byte flipped), and the evidence says
    so (NOT_PE); a kernel built that way has no signature check to show anyway."""
    if not is_pe(bzimage):
        return tamper(bzimage)[0] if kind == "tampered" else bzimage
    if kind == "unsigned":
        return strip(bzimage)
    if kind == "signed":
        return sign(bzimage, key_pair(cache_dir, "lab"))
    if kind == "wrong-key":
        return sign(bzimage, key_pair(cache_dir, "wrong"))
    if kind == "tampered":
        return tamper(sign(bzimage, key_pair(cache_dir, "lab")))[0]
    raise ValueError(f"unknown signature image {kind!r}")


# ------------------------------------------------------------------ what a kernel trusts

def trusted_lab_keys(bzimage: Path, cache_dir: Path) -> list[str]:
    """Which of the lab's keys this kernel has built in, found in the kernel itself:
    the certificate's DER bytes inside the vmlinux the bzImage carries (the built-in
    keyring is loaded from there, certs/system_keyring.c).  Cached per bzImage."""
    data = Path(bzimage).read_bytes()
    pairs = [key_pair(cache_dir, name) for name in KEY_NAMES]
    ident = hashlib.sha256(data + b"".join(p.fingerprint().encode() for p in pairs)).hexdigest()
    cached = signing_dir(cache_dir) / "trust" / f"{ident[:24]}.json"
    if cached.is_file():
        facts = json.loads(cached.read_text())
        if facts.get("format") == TRUST_FORMAT:
            return facts["trusted"]
    vmlinux = extract_vmlinux(data)
    trusted = [p.name for p in pairs if p.der() in vmlinux]
    cached.parent.mkdir(exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"format": TRUST_FORMAT, "bzimage": str(bzimage),
                               "trusted": trusted}) + "\n")
    os.replace(tmp, cached)
    return trusted
