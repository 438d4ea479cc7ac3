#!/usr/bin/env python3
"""The capture initramfs, file by file: what purgatory hashes and the capture kernel unpacks
on every crash (the slow case, crash-intact on debian-6.12, spends ~1.8 s unpacking it).

    .venv/bin/python bench/capture_initramfs.py [--save-vmcore]

Prints each regular file's size and share, largest first, and what runs it in the
capture kernel (guests/init, the helper, the dump check's vmcore-dmesg, --save-vmcore's
makedumpfile), so that whatever the capture side does not run can be left out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from labctl.config.schema import load_lab
from labctl.guest.assets import build_assets
from labctl.guest.cpio import regular_files
from labctl.kernel.providers import resolve_kernel

ROOT = Path(__file__).resolve().parent.parent
USED_BY = {"bin/busybox": "guests/init (sh, mount, grep, sha256sum) and the console shell",
           "bin/kexec-lab-helper": "the control channel (hello, page hashes)",
           "sbin/vmcore-dmesg": "the dump check (the crashed kernel's log)",
           "usr/bin/makedumpfile": "--save-vmcore only",
           "init": "PID 1", "etc/kexec-lab.sha256": "guests/init's manifest check"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-vmcore", action="store_true", help="with makedumpfile and its libraries")
    args = parser.parse_args()
    lab = load_lab(ROOT / "lab.yaml")
    kernel = resolve_kernel(lab, None)
    assets = build_assets(lab.cache_dir, kernel.capture_image, dump_tools=args.save_vmcore)
    archive = assets.capture_initramfs.read_bytes()
    files = regular_files(archive)
    print(f"{assets.capture_initramfs.name}: {len(archive)} bytes, {len(files)} regular files")
    for name, data in sorted(files.items(), key=lambda item: -len(item[1])):
        used = USED_BY.get(name.lstrip("/"), "a shared library of the dump tools"
                           if name.lstrip("/").startswith("lib") else "")
        print(f"{len(data):>9} {100 * len(data) / len(archive):5.1f}%  {name}  {used}")


if __name__ == "__main__":
    main()
