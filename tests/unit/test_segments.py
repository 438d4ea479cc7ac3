"""Segment tables parsed from what real 6.12 and 6.1 kernels printed during a load."""

import pytest
from recorded import KERNELS, message

from labctl.evidence.segments import parse_segment_table

ROLES = {"elfcorehdr", "purgatory", "boot_params", "kernel", "initrd"}


@pytest.mark.parametrize("kernel", KERNELS)
def test_recorded_load_gives_five_segments_with_roles(kernel):
    loaded = message(kernel, "crash-intact", "loaded")
    table = parse_segment_table(loaded["log"])
    assert len(table.segments) == 5
    assert {s.role for s in table.segments} == ROLES
    primary = message(kernel, "crash-intact", "hello", role="primary")
    start, end = primary["crashkernel"]
    for seg in table.segments:
        assert start <= seg.mem and seg.mem + seg.memsz <= end + 1, seg
        assert seg.bufsz <= seg.memsz
    if kernel == "debian-6.12":  # 6.1 does not print the entry point
        assert table.by_role("purgatory").contains(table.entry)


def test_6_12_uses_kexec_file_debug_and_6_1_dynamic_debug():
    assert message("debian-6.12", "crash-intact", "loaded")["dynamic_debug"] is False
    assert message("debian-6.1", "crash-intact", "loaded")["dynamic_debug"] is True


def test_both_line_formats():
    lines = [
        "kexec_file: Loaded purgatory at 0x3dffa000",
        "kexec_file(bzImage64): Loaded 64bit kernel at 0x3ac00000 bzimage=0x1 ...",
        "kexec_file: segment[0]: buf=0x000000001 bufsz=0x4000 mem=0x3dffa000 memsz=0x5000",
        "kexec_file: Loading segment 1: buf=0x0000000002 bufsz=0xb187c0 mem=0x3ac00000 memsz=0x37dc000",
        "kexec_file_load: type:1, start:0x3dffa140 head:0x1 flags:0xa",
    ]
    table = parse_segment_table(lines)
    assert [(s.index, s.role, s.mem, s.memsz, s.bufsz) for s in table.segments] == [
        (0, "purgatory", 0x3DFFA000, 0x5000, 0x4000),
        (1, "kernel", 0x3AC00000, 0x37DC000, 0xB187C0),
    ]
    assert table.entry == 0x3DFFA140
    assert table.containing(0x3DFFA140).role == "purgatory"
    assert table.containing(0x1000) is None


def test_unrecognised_lines_give_an_empty_table_not_a_guess():
    table = parse_segment_table(["random noise", "segment[x]: garbage", ""])
    assert table.segments == () and table.entry is None
    assert table.by_role("kernel") is None


@pytest.mark.parametrize("kernel", KERNELS)
def test_kexec_tools_output_gives_roles_and_entry(kernel):
    """kexec_load: kexec-tools' `-d` output, one field per line, names its own segments."""
    tool = message(kernel, "crash-corrupt-kexec-load", "kexec-tool")
    assert tool["rc"] == 0 and tool["kexec_crash_loaded"] == "1"
    table = parse_segment_table(tool["output"] + tool["log"])
    roles = {s.role for s in table.segments}
    assert {"kernel", "initrd", "boot_params", "elfcorehdr", "purgatory", "backup"} <= roles
    assert table.by_role("purgatory").contains(table.entry)
    assert len(table.segments) == 7  # kexec-tools adds a segment it does not name
    assert sum(s.role is None for s in table.segments) == 1


def test_kexec_tools_field_lines_need_all_three_fields():
    lines = ["segment[0].bufsz = 0x30", "segment[0].mem   = 0x2a000000",
             "segment[1].bufsz = 0x10", "segment[1].mem = 0x1000", "segment[1].memsz = 0x1000"]
    table = parse_segment_table(lines)
    assert [(s.index, s.mem) for s in table.segments] == [(1, 0x1000)]
