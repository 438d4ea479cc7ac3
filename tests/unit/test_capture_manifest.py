"""guests/init's check of the capture initramfs, run with busybox's sh on the host (its own
block, the guest paths moved into a temporary directory): a manifest that is gone is damage,
never a reason to skip the check."""

from __future__ import annotations

import hashlib
import re
import subprocess

import pytest

from labctl.guest.assets import BUSYBOX, INIT_SCRIPT
from labctl.pair.steps import INITRAMFS_DAMAGED

BLOCK = re.compile(r"^if grep -q -e elfcorehdr= -e labctl_run= /proc/cmdline; then\n.*?^fi\n", re.S | re.M)


def run_check(tmp_path, cmdline: str, manifest: str | None) -> list[str]:
    (tmp_path / "cmdline").write_text(cmdline)
    (tmp_path / "helper").write_bytes(b"the helper")
    if manifest is not None:
        (tmp_path / "manifest").write_text(manifest)
    block = BLOCK.search(INIT_SCRIPT.read_text())[0]
    block = block.replace("/proc/cmdline", str(tmp_path / "cmdline")).replace(
        "/etc/kexec-lab.sha256", str(tmp_path / "manifest"))
    proc = subprocess.run([str(BUSYBOX), "sh", "-c", block], capture_output=True, text=True, timeout=30,
                          env={"PATH": str(tmp_path / "bin")}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return [m[0].strip() for m in INITRAMFS_DAMAGED.finditer(proc.stdout + "\n")]


@pytest.fixture
def applets(tmp_path):
    """busybox's applets on PATH, as guests/init has them."""
    (tmp_path / "bin").mkdir()
    for applet in ("grep", "sha256sum", "tr", "echo"):
        (tmp_path / "bin" / applet).symlink_to(BUSYBOX)


def test_the_capture_kernel_checks_its_files_and_a_missing_manifest_is_damage(tmp_path, applets):
    good = f"{hashlib.sha256(b'the helper').hexdigest()}  {tmp_path / 'helper'}\n"
    capture = "console=ttyS0 elfcorehdr=0x2e000000"
    assert run_check(tmp_path, capture, good) == []
    assert run_check(tmp_path, capture, good.replace(good[:4], "0000"))[0].startswith(
        f"kexec-lab: initramfs damaged: {tmp_path / 'helper'}: FAILED")
    (tmp_path / "manifest").unlink()
    assert run_check(tmp_path, capture, None) == [
        f"kexec-lab: initramfs damaged: {tmp_path / 'manifest'} (the manifest) is missing (labctl_run=none)"]
    assert run_check(tmp_path, "console=ttyS0", None) == []  # the primary kernel checks nothing
