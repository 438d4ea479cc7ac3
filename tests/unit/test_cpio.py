"""The initramfs writer: GNU cpio reads what it writes, byte for byte the same each time."""

import subprocess

from labctl.guest.assets import boot_payload_bytes, capture_initramfs_bytes
from labctl.guest.cpio import CpioWriter


def sample() -> bytes:
    cpio = CpioWriter()
    cpio.directory("bin")
    cpio.file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
    cpio.symlink("bin/sh", "tool")
    cpio.char_device("dev/console", 5, 1)
    cpio.file("odd", b"x" * 5)
    return cpio.getvalue()


def test_gnu_cpio_lists_and_extracts_it(tmp_path):
    data = sample()
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=data, capture_output=True, check=True)
    lines = listing.stdout.decode().splitlines()
    assert [line.split()[-1] if "->" not in line else line.split()[-3] for line in lines] == [
        "bin", "bin/tool", "bin/sh", "dev/console", "odd"]
    assert lines[1].startswith("-rwxr-xr-x") and lines[2].startswith("lrwxrwxrwx")
    assert lines[3].startswith("crw")
    subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames"], input=data,
                   cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "odd").read_bytes() == b"xxxxx"


def test_deterministic_and_padded():
    assert sample() == sample()
    assert len(sample()) % 512 == 0
    assert sample().startswith(b"070701")


def test_initramfs_layout_and_appended_boot_payload():
    base = capture_initramfs_bytes(b"BUSYBOX", ["sh", "mount"], b"HELPER", b"#!/bin/sh\n")
    names = subprocess.run(["cpio", "-it", "--quiet"], input=base, capture_output=True,
                           check=True).stdout.decode().split()
    assert {"init", "bin/busybox", "bin/sh", "bin/mount", "bin/kexec-lab-helper",
            "dev/console"} <= set(names)
    payload = boot_payload_bytes(b"KERNEL", base)
    inner = subprocess.run(["cpio", "-it", "--quiet"], input=payload, capture_output=True,
                           check=True).stdout.decode().split()
    assert inner == ["boot/vmlinuz", "boot/initrd.img"]


def test_regular_files_read_back_what_was_written_and_later_archives_win():
    from labctl.guest.cpio import CpioWriter, regular_files

    one, two = CpioWriter(), CpioWriter()
    one.directory("bin")
    one.file("bin/a", b"first")
    one.file("init", b"#!/bin/sh\n" * 3)
    one.symlink("bin/sh", "busybox")
    two.file("bin/a", b"second, longer")
    assert regular_files(one.getvalue() + two.getvalue()) == {"bin/a": b"second, longer",
                                                              "init": b"#!/bin/sh\n" * 3}
