"""Bad images, built from the real catalogue kernels (make test fetches them)."""

from pathlib import Path

import pytest

from labctl.config.schema import load_lab
from labctl.errors import InfraError
from labctl.kernel.load_images import BAD_IMAGES, bad_image, bzimage_payload, extract_vmlinux, is_elf_executable
from labctl.kernel.providers import resolve_kernel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=["debian-6.12", "debian-6.1"])
def bzimage(request) -> bytes:
    lab = load_lab(ROOT / "lab.yaml")
    return resolve_kernel(lab, request.param, progress=lambda _: None).bzimage.read_bytes()


def test_vmlinux_comes_out_of_the_bzimage_payload(bzimage):
    """6.12 is zstd-compressed, 6.1 lz4: both unpack to the kernel's ELF vmlinux."""
    payload = bzimage_payload(bzimage)
    assert payload[:4] in (b"\x28\xb5\x2f\xfd", b"\x02\x21\x4c\x18")
    vmlinux = extract_vmlinux(bzimage)
    assert is_elf_executable(vmlinux)
    assert len(vmlinux) > 2 * len(bzimage)


def test_bad_images_are_deterministic_and_bad(bzimage):
    assert bad_image("garbage", bzimage) == bad_image("garbage", bzimage)
    assert bad_image("garbage", bzimage)[:4] != b"\x7fELF"
    assert bad_image("empty", bzimage) == b""
    truncated = bad_image("truncated", bzimage)
    assert truncated[0x202:0x206] == b"HdrS" and len(truncated) == len(bzimage) // 2
    assert set(BAD_IMAGES) == {"garbage", "empty", "truncated", "elf-vmlinux"}


def test_not_a_bzimage_is_refused():
    with pytest.raises(InfraError, match="not a bzImage"):
        bzimage_payload(b"\0" * 4096)
