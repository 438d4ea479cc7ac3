"""Signing keys and signature images, made with the real openssl and sbsigntool from the
real Debian kernels (make test fetches them); sbverify is the independent judge."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from labctl.config.schema import load_lab
from labctl.errors import InfraError
from labctl.kernel import signing
from labctl.kernel.providers import resolve_kernel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def debian() -> bytes:
    """Debian 6.12's vmlinuz, signed by Debian's Secure Boot key as shipped."""
    lab = load_lab(ROOT / "lab.yaml")
    return resolve_kernel(lab, "debian-6.12", progress=lambda _: None).bzimage.read_bytes()


@pytest.fixture(scope="module")
def images(debian, cache) -> dict[str, bytes]:
    return {kind: signing.signed_image(kind, debian, cache) for kind in signing.SIGNED_IMAGES}


def test_key_pairs_are_made_once_private_and_distinct(cache):
    lab, wrong = signing.key_pair(cache, "lab"), signing.key_pair(cache, "wrong")
    assert stat.S_IMODE(os.stat(lab.key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(lab.key.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cache / "signing").st_mode) == 0o700
    before = lab.cert.read_bytes()
    again = signing.key_pair(cache, "lab")
    assert again.cert.read_bytes() == before  # cached, not made again
    assert lab.fingerprint() != wrong.fingerprint()
    assert lab.der()[:1] == b"\x30"  # a DER SEQUENCE, as the kernel embeds it
    with pytest.raises(ValueError):
        signing.key_pair(cache, "debian")


def test_debian_vmlinuz_carries_debians_signature(debian):
    assert signing.is_pe(debian)
    assert signing.signatures(debian) == ["/CN=Debian Secure Boot CA"]


def test_signed_verifies_with_the_lab_key_only(images, cache):
    lab, wrong = signing.key_pair(cache, "lab"), signing.key_pair(cache, "wrong")
    signed = images["signed"]
    assert signing.verifies(signed, lab) and not signing.verifies(signed, wrong)
    # Debian's signature was removed first: exactly one signature, the lab's
    assert signing.signatures(signed) == ["/CN=kexec-lab signing key/O=kexec-lab"]


def test_wrong_key_verifies_only_with_the_wrong_key(images, cache):
    image = images["wrong-key"]
    assert signing.verifies(image, signing.key_pair(cache, "wrong"))
    assert not signing.verifies(image, signing.key_pair(cache, "lab"))
    assert len(signing.signatures(image)) == 1


def test_unsigned_has_no_signature_left(images, debian):
    unsigned = images["unsigned"]
    assert signing.signatures(unsigned) == []
    assert signing.certificate_table(unsigned) == (0, 0)
    assert len(unsigned) < len(debian)


def test_tampered_is_one_byte_inside_the_signed_region_and_fails_sbverify(images, cache):
    tampered, lab = images["tampered"], signing.key_pair(cache, "lab")
    _, offset = signing.tamper(tampered)
    table, size = signing.certificate_table(tampered)
    assert 0 < offset < table and size > 0  # inside what the Authenticode digest covers
    assert signing.signatures(tampered) == ["/CN=kexec-lab signing key/O=kexec-lab"]
    assert not signing.verifies(tampered, lab)
    restored = bytearray(tampered)
    restored[offset] ^= 0xFF  # that one byte back: the signature holds again
    assert signing.verifies(bytes(restored), lab)


def test_images_are_deterministic_apart_from_the_signature(debian, cache, images):
    assert signing.signed_image("unsigned", debian, cache) == images["unsigned"]
    again = signing.signed_image("tampered", debian, cache)
    assert signing.tamper(again)[1] == signing.tamper(images["tampered"])[1]


def test_an_image_without_efi_stub_cannot_be_signed(cache):
    not_pe = b"\0" * 0x1F1 + b"\x04" + b"\0" * 0x10 + b"HdrS" + b"\0" * 8192
    assert not signing.is_pe(not_pe)
    assert signing.signed_image("signed", not_pe, cache) == not_pe
    tampered = signing.signed_image("tampered", not_pe, cache)
    assert sum(a != b for a, b in zip(tampered, not_pe, strict=True)) == 1
    with pytest.raises(InfraError, match="EFI_STUB"):
        signing.certificate_table(not_pe)


def test_a_kernel_trusts_only_the_keys_found_inside_it(tmp_path, cache, debian):
    """Debian's keyring has no lab key; a bzImage whose payload holds the certificate's
    DER does (the lab compresses a fake vmlinux with zstd into a real setup header)."""
    assert signing.trusted_lab_keys(_written(tmp_path / "debian", debian), cache) == []
    lab_der = signing.key_pair(cache, "lab").der()
    fake = _fake_bzimage(b"\x7fELF" + b"\0" * 60 + b"certs:" + lab_der + b"\0" * 64)
    assert signing.trusted_lab_keys(_written(tmp_path / "fake", fake), cache) == ["lab"]
    cached = list((cache / "signing" / "trust").glob("*.json"))
    assert len(cached) == 2
    assert signing.trusted_lab_keys(tmp_path / "fake", cache) == ["lab"]  # from the cache


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _fake_bzimage(vmlinux: bytes) -> bytes:
    """A setup header (HdrS, setup_sects 4) whose payload is vmlinux, zstd-compressed."""
    import subprocess
    payload = subprocess.run(["zstd", "-q", "-c"], input=vmlinux, capture_output=True,
                             check=True).stdout + len(vmlinux).to_bytes(4, "little")
    head = bytearray(5 * 512)
    head[0x1F1] = 4
    head[0x202:0x206] = b"HdrS"
    head[0x248:0x24C] = (0).to_bytes(4, "little")
    head[0x24C:0x250] = len(payload).to_bytes(4, "little")
    return bytes(head) + payload
