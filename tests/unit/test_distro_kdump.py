"""userland: debian — its scenario rules, the kdump file reader, the checks of kdump-tools'
dump, and what the report unit said on a recorded run (tests/data/debian-6.12/distro-kdump)."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from recorded import message

from labctl.config.schema import load_scenario
from labctl.errors import ConfigError
from labctl.evidence import distro_dump
from labctl.evidence.dump_cpus import prstatus_notes
from labctl.evidence.kdump_file import KdumpFormatError, notes_as_elf_head, open_kdump
from labctl.evidence.segments import parse_segment_table
from labctl.guest import rootfs
from labctl.kernel.image import Kernel

ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "tests" / "data" / "debian-6.12"
PAGE = 4096


def control_lines(name: str) -> list[dict]:
    """The report unit's JSON lines from a recorded control.log."""
    lines = []
    for raw in (RECORDED / name / "control.log").read_text().splitlines():
        _, _, rest = raw.partition("] < ")
        if rest.startswith("{"):
            lines.append(json.loads(rest))
    return lines


def sources(messages: list[dict], source: str) -> list[str]:
    return [m["line"] for m in messages if m.get("type") == "log" and m.get("source") == source]


# ------------------------------------------------------------------ scenarios

def test_shipped_distro_scenarios_load():
    intact = load_scenario(ROOT / "scenarios" / "distro-kdump.yaml")
    corrupt = load_scenario(ROOT / "scenarios" / "distro-kdump-corrupt.yaml")
    assert intact.userland == corrupt.userland == "debian"
    assert intact.load.method == "kexec_load" and intact.expect.outcome == "capture-booted"
    assert corrupt.corrupt.segment == "kernel" and corrupt.expect.outcome == "purgatory-refused"
    assert load_scenario(ROOT / "scenarios" / "crash-intact.yaml").userland == "lab"


@pytest.mark.parametrize("body, key", [
    ("load: {kernel: garbage}", "load"),
    ("trigger: nmi", "trigger"),
    ("corrupt: {segment: elfcorehdr}", "corrupt.segment"),
    ("then_intact: true\nexpect: load-rejected", "then_intact"),
    ("userland: fedora", "userland"),
])
def test_debian_userland_refuses_what_kdump_tools_does_not_do(tmp_path, body, key):
    text = "userland: debian\nexpect: capture-booted\n" + body + "\n"
    if body.startswith("userland:"):
        text = body + "\nexpect: capture-booted\n"
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert str(path) in str(err.value)


# ------------------------------------------------------------------ rootfs

def test_rootfs_key_follows_versions_kernel_and_files():
    kernel = Kernel("debian-6.12", Path("/k/boot/vmlinuz-6.12"), "6.12", "linux-image-6.12", "1")
    versions = {p: "1" for p in rootfs.PACKAGES}
    key = rootfs.image_key(kernel, versions)
    assert key == rootfs.image_key(kernel, dict(versions))
    assert key != rootfs.image_key(kernel, {**versions, "kdump-tools": "2"})
    other = Kernel("debian-6.1", Path("/k/boot/vmlinuz-6.1"), "6.1", "linux-image-6.1", "1")
    assert key != rootfs.image_key(other, versions)
    assert {"fstab", "kexec-lab-report", "kexec-lab-setup"} <= set(rootfs.guest_files())


def test_rootfs_needs_a_debian_packaged_kernel():
    recipe = Kernel("tiny-6.12", Path("/cache/bzImage"), "6.12.0")
    with pytest.raises(ConfigError) as err:
        rootfs.kernel_tree(recipe)
    assert err.value.key == ("userland",) and "Debian-packaged" in str(err.value)


def test_fstab_mounts_var_crash_without_nofail():
    """nofail took /var/crash out of local-fs.target, and kdump-tools-dump.service (After=
    local-fs.target) wrote before it was mounted: the dump was lost (recorded run)."""
    entries = [line.split() for line in rootfs.guest_files()["fstab"].decode().splitlines()
               if line and not line.startswith("#")]
    crash = next(e for e in entries if e[1] == "/var/crash")
    assert "nofail" not in crash[3].split(",")


# ------------------------------------------------------------------ recorded run

def test_recorded_report_names_kexec_load_and_its_segments():
    messages = control_lines("distro-kdump")
    report = next(m for m in messages if m["type"] == "kdump")
    assert report["kexec_crash_loaded"] == 1 and report["unit"] == "active"
    command = " ".join(sources(messages, "kexec_cmd"))
    call = distro_dump.kexec_call(command, sources(messages, "kdump-tools"), sources(messages, "dmesg"))
    assert call == {"by_command": "kexec_load", "by_log": "kexec_load"}
    table = parse_segment_table(sources(messages, "kdump-tools"))
    roles = {s.role for s in table.segments}
    assert {"kernel", "purgatory", "initrd"} <= roles
    iomem = distro_dump.parse_iomem(sources(messages, "iomem"))
    start, end = iomem["crashkernel"]
    assert end - start + 1 == report["kexec_crash_size"] == 256 << 20
    assert all(start <= s.mem < end for s in table.segments if s.role != "backup")


def test_kexec_call_from_a_kexec_file_load():
    kernel = ["kexec_file: Loaded purgatory at 0x37ffb000",
              "kexec_file: segment[0]: buf=0x0 bufsz=0x1000 mem=0x37ffe000 memsz=0x1000"]
    assert distro_dump.kexec_call("/sbin/kexec -p -d -s --initrd=x vmlinuz", [], kernel) == {
        "by_command": "kexec_file_load", "by_log": "kexec_file_load"}
    assert distro_dump.kexec_call("/sbin/kexec -p --initrd=x vmlinuz", [], []) == {
        "by_command": "kexec_load", "by_log": None}
    # 6.12 without KEXEC_FILE_DEBUG: no segment lines, but kexec_file's own probe speaks
    probe = ["[   73.696573] kexec-bzImage64: It's a relocatable bzImage64",
             "[   73.827638] kexec_file: kernel signature verification failed (-126)."]
    assert distro_dump.kexec_call("/sbin/kexec -p -d -s vmlinuz", [], probe)["by_log"] == "kexec_file_load"
    assert distro_dump.kexec_call("/sbin/kexec -p -d vmlinuz", [], probe[:0])["by_log"] is None


def test_dmesg_file_must_hold_the_console_panic():
    dmesg = (RECORDED / "distro-kdump" / "dmesg.txt").read_text()
    panic = ["Kernel panic - not syncing: sysrq triggered crash"]
    assert distro_dump.check_log(dmesg, panic)["problems"] == []
    missing = distro_dump.check_log(dmesg.replace("sysrq triggered crash", "elsewhere"), panic)
    assert missing["problems"] and not missing["found"]
    assert distro_dump.check_log(None, panic)["problems"] == ["kdump-tools saved no dmesg file"]


def test_the_dumps_log_names_the_lab_script_as_the_crashed_task():
    dmesg = (RECORDED / "distro-kdump" / "dmesg.txt").read_text()
    panic = ["Kernel panic - not syncing: sysrq triggered crash"]
    log = distro_dump.check_log(dmesg, panic)
    assert log["crashed_task"] == {"cpu": 0, "pid": 408, "comm": "kexec-lab-repor"}
    other = distro_dump.check_log(dmesg.replace("Comm: kexec-lab-repor", "Comm: bash"), panic)
    assert other["problems"] == ["the dump says 'bash' crashed, not the lab's 'kexec-lab-repor'"]
    six_one = "sysrq: Trigger a crash\nCPU: 0 PID: 353 Comm: kexec-lab-repor Kdump: loaded\n"
    assert distro_dump.crashed_task(six_one.splitlines())["pid"] == 353  # 6.1: no UID field


# ------------------------------------------------------------------ kdump files

def kdump_bytes(pages: dict[int, bytes], release: str = "6.12.0", max_mapnr: int = 64,
                notes: bytes = b"") -> bytes:
    """A kdump-compressed file laid out as makedumpfile's diskdump_mod.h says (header
    version 6, one bitmap block each, zlib pages; `notes` after the pages, as
    offset_note/size_note name them)."""
    header = bytearray(PAGE)
    header[:8] = b"KDUMP   "
    struct.pack_into("<i", header, 8, 6)
    for i, field in enumerate((b"Linux", b"lab", release.encode(), b"#1", b"x86_64", b"")):
        header[12 + i * 65:12 + i * 65 + len(field)] = field
    struct.pack_into("<iiII", header, 428, PAGE, 1, 2, max_mapnr)
    info = f"OSRELEASE={release}\n".encode()
    sub = bytearray(PAGE)
    struct.pack_into("<qQ", sub, 32, 2 * PAGE - len(info), len(info))
    struct.pack_into("<Q", sub, 96, max_mapnr)
    sub[PAGE - len(info):] = info
    bitmap = bytearray(PAGE)
    for pfn in pages:
        bitmap[pfn // 8] |= 1 << (pfn % 8)
    data_start = 4 * PAGE + len(pages) * 24
    descs, blobs = b"", b""
    for pfn in sorted(pages):
        blob = zlib.compress(pages[pfn])
        descs += struct.pack("<qIIQ", data_start + len(blobs), len(blob), 1, 0)
        blobs += blob
    if notes:
        struct.pack_into("<qQ", sub, 48, data_start + len(blobs), len(notes))
    return bytes(header + sub + bitmap + bitmap + descs + blobs + notes)


def test_kdump_file_pages_and_release(tmp_path):
    pages = {3: b"\x11" * PAGE, 9: bytes(range(256)) * 16}
    path = tmp_path / "vmcore"
    path.write_bytes(kdump_bytes(pages))
    dump = open_kdump(path)
    assert dump.release == "6.12.0" and dump.dumped_pfns() == [3, 9]
    assert dict(dump.pages()) == pages
    assert distro_dump.check_release(dump, "6.12.0")["problems"] == []
    assert distro_dump.check_release(dump, "6.1.0")["problems"]


def test_dump_pages_against_the_ram_at_the_crash(tmp_path):
    pages = {3: b"\x11" * PAGE, 9: b"\x22" * PAGE}
    path = tmp_path / "vmcore"
    path.write_bytes(kdump_bytes(pages))
    dump = open_kdump(path)
    truth = {pfn: distro_dump.page_digest(data) for pfn, data in pages.items()}
    assert distro_dump.check_pages(dump, truth)["problems"] == []
    truth[9] = distro_dump.page_digest(b"\x23" * PAGE)
    found = distro_dump.check_pages(dump, truth)
    assert found["differ"] == 1 and found["differ_pfns"] == ["0x9"] and found["problems"]
    assert distro_dump.check_pages(dump, {})["problems"] == [
        "the dump holds no page of the crashed kernel's RAM"]


def test_a_damaged_kdump_file_is_named(tmp_path):
    path = tmp_path / "vmcore"
    path.write_bytes(b"ELF" + bytes(5000))
    with pytest.raises(KdumpFormatError):
        open_kdump(path)
    good = kdump_bytes({3: b"\x11" * PAGE})
    path.write_bytes(good[:-10])  # the last page cut short
    assert "lies outside the file" in distro_dump.check_pages(open_kdump(path), {3: 0})["problems"][0]


def test_a_new_image_supersedes_the_same_kernels_older_ones(tmp_path):
    def image(name):
        (tmp_path / name).mkdir()
        (tmp_path / name / rootfs.MANIFEST).write_text("{}")
        (tmp_path / f"{name}.lock").touch()
        return tmp_path / name
    old, new = image("debian-bookworm-6.1.0-57-cloud-amd64-aaaa"), image("debian-bookworm-6.1.0-57-cloud-amd64-bbbb")
    other = image("debian-bookworm-6.12.117+deb12-cloud-amd64-aaaa")
    rootfs.prune(new)
    assert not old.exists() and not (tmp_path / f"{old.name}.lock").exists()
    assert new.exists() and other.exists()


def test_a_root_disk_that_never_shows_up_is_seen_at_once():
    """debian-6.1 builds virtio-pci as a module: an initramfs without it never saw /dev/vda,
    and the guest halted (panic=0) with no panic line (recorded serial.log tail)."""
    from labctl.pair.distro import NO_ROOT
    text = (ROOT / "tests" / "data" / "debian-6.1" / "distro-kdump-no-root" / "serial.log").read_text()
    lines = [line.split("] ", 1)[1] + "\n" for line in text.splitlines()]
    hits = [line for line in lines if NO_ROOT.search(line)]
    assert len(hits) == 2 and "ALERT!" in hits[1]


def test_the_initramfs_modules_carry_virtio_pci_and_virtio_blk(tmp_path):
    root = tmp_path / "root"
    for d in ("etc/initramfs-tools/conf.d", "etc/systemd/system", "usr/local/sbin", "var"):
        (root / d).mkdir(parents=True)
    rootfs.add_guest_files(root)
    modules = (root / "etc/initramfs-tools/modules").read_text().split()
    assert modules == ["virtio_pci", "virtio_blk"]
    assert "MODULES=list" in (root / "etc/initramfs-tools/conf.d/kexec-lab").read_text()


def test_the_notes_makedumpfile_kept_read_as_proc_vmcores_head(tmp_path):
    """kdump-tools' dump keeps /proc/vmcore's ELF notes in its sub-header: the PRSTATUS note
    each CPU saved in the crash path reads the same from there as from the capture kernel's
    own /proc/vmcore head (recorded: debian-6.12, 2 CPUs), so drgn can unwind the crashed
    task without debug info (dump_open)."""
    head = bytes.fromhex(message("debian-6.12", "crash-intact-cpu1", "hello", role="capture")["vmcore_head"])
    elf = ELFFile(io.BytesIO(head))
    raw = b"".join(head[seg["p_offset"]:seg["p_offset"] + seg["p_filesz"]]
                   for seg in elf.iter_segments() if seg["p_type"] == "PT_NOTE")
    path = tmp_path / "vmcore"
    path.write_bytes(kdump_bytes({3: b"\x11" * PAGE}, notes=raw))
    dump = open_kdump(path)
    assert dump.notes == raw and len(prstatus_notes(head)) == 2
    assert prstatus_notes(notes_as_elf_head(dump)) == prstatus_notes(head)
    path.write_bytes(kdump_bytes({3: b"\x11" * PAGE}))
    assert notes_as_elf_head(open_kdump(path)) == b""  # none saved: nothing to unwind from
