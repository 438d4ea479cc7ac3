"""Purgatory's entry point and section layout from the kernel's own purgatory object.

tests/data/<kernel>/purgatory.ro is the kexec_purgatory[] object each Debian kernel
carried in guest RAM, found by purgatory.find_in_memory on a real guest (same
kernel packages as the recorded transcripts next to it).
"""

import pytest
from recorded import DATA, message, result

from labctl.evidence import purgatory
from labctl.evidence.segments import parse_segment_table
from labctl.guest.memory import GuestMemory


def table(kernel):
    return parse_segment_table(message(kernel, "crash-corrupt", "loaded")["log"])


def obj(kernel):
    return (DATA / kernel / "purgatory.ro").read_bytes()


def test_computed_entry_matches_what_6_12_logs():
    t = table("debian-6.12")
    segment = t.by_role("purgatory")
    placement = purgatory.place(obj("debian-6.12"), segment.mem, segment.bufsz)
    assert t.entry == 0x3DFFB160 and placement.entry == t.entry
    assert placement.entry_symbol == "purgatory_start"
    assert placement.sections[".text"] == segment.mem
    assert placement.sections[".bss"] >= segment.mem + segment.bufsz  # NOBITS after the buffer


def test_6_1_entry_is_computed_and_the_parked_rip_lies_in_the_purgatory_function():
    t = table("debian-6.1")
    assert t.entry is None  # 6.1 does not log it
    placement = purgatory.locate(t, obj("debian-6.1"))
    assert placement.entry == 0x3DFFA120 and placement.entry_symbol == "purgatory_start"
    parked = int(result("debian-6.1", "crash-corrupt")["evidence"]["verdict"]["parked"]["rip"], 16)
    text = placement.sections[".text"]
    assert text + 0x100 <= parked < text + 0x10D  # purgatory(): value 0x100, size 0xd (6.1's log)


def test_sections_keep_their_alignment_and_order():
    segment = table("debian-6.12").by_role("purgatory")
    placement = purgatory.place(obj("debian-6.12"), segment.mem, segment.bufsz)
    addresses = [a for name, a in placement.sections.items() if name != ".bss"]
    assert addresses == sorted(addresses)
    assert placement.sections[".data"] % 4096 == 0 and placement.sections[".rodata"] % 32 == 0


def test_only_the_kernels_purgatory_object_is_accepted():
    kernel = obj("debian-6.12")
    assert purgatory._kernel_purgatory(kernel + b"trailing RAM") == kernel
    assert purgatory._kernel_purgatory(kernel[:200]) is None          # cut short
    exec_header = kernel[:16] + (2).to_bytes(2, "little") + kernel[18:]  # ET_EXEC
    assert purgatory._kernel_purgatory(exec_header) is None
    renamed = kernel.replace(b"purgatory_sha_regions", b"purgatory_sha_regionz")
    assert purgatory._kernel_purgatory(renamed) is None                 # kexec-tools' would lack it


def test_logged_entry_wins_when_there_is_no_object():
    t = table("debian-6.12")
    assert purgatory.locate(t, None) == purgatory.Placement(0x3DFFB160, {}, None)


@pytest.mark.parametrize("kernel", ["debian-6.12", "debian-6.1"])
def test_gdb_command_loads_symbols_and_breaks_at_the_entry(kernel, tmp_path):
    placement = purgatory.locate(table(kernel), obj(kernel))
    argv = purgatory.gdb_argv(4321, placement, tmp_path / "purgatory.ro")
    assert argv[:2] == ["gdb", "-q"]
    assert "target remote 127.0.0.1:4321" in argv and argv[-2:] == ["-ex", "continue"]
    assert f"hbreak *{placement.entry:#x}" in argv
    symbols = next(a for a in argv if a.startswith("add-symbol-file"))
    assert symbols.startswith(f"add-symbol-file {tmp_path / 'purgatory.ro'} -s .text {placement.sections['.text']:#x}")
    hint = purgatory.gdb_hint(4321, placement, tmp_path / "purgatory.ro", loaded=True)
    assert f"stops at purgatory's entry {placement.entry:#x} (purgatory_start)" in hint


def test_gdb_command_before_a_load_only_attaches():
    argv = purgatory.gdb_argv(1234, None, None)
    assert not any(a.startswith(("hbreak", "add-symbol-file")) for a in argv)
    assert "added once the capture kernel is loaded" in purgatory.gdb_hint(1234, None, None, loaded=False)


def test_find_in_memory_skips_other_elf_objects(tmp_path):
    kernel = obj("debian-6.12")
    ram = bytearray(4 << 20)
    decoy = kernel.replace(b"purgatory_sha_regions", b"sha256_regions\0\0\0\0\0\0\0")
    ram[0x1000:0x1000 + len(decoy)] = decoy                      # like kexec-tools' purgatory
    ram[0x80000:0x80040] = kernel[:16] + (2).to_bytes(2, "little") + kernel[18:64]  # an ET_EXEC
    ram[0x200123:0x200123 + len(kernel)] = kernel
    (tmp_path / "ram").write_bytes(ram)
    memory = GuestMemory(tmp_path / "ram")
    try:
        assert purgatory.find_in_memory(memory) == kernel
        memory.write(0x200123, b"\0")                             # no kernel purgatory left
        assert purgatory.find_in_memory(memory) is None
    finally:
        memory.close()


def test_search_reads_only_what_the_guest_wrote(tmp_path):
    kernel = obj("debian-6.1")
    with open(tmp_path / "ram", "wb") as ram:      # sparse, like a fresh RAM backing file
        ram.truncate(64 << 20)
        ram.seek(40 << 20)
        ram.write(kernel)
    memory = GuestMemory(tmp_path / "ram")
    try:
        ranges = list(memory.written_ranges())
        assert any(start <= 40 << 20 < end for start, end in ranges)
        assert sum(end - start for start, end in ranges) < 8 << 20   # the holes are skipped
        assert purgatory.find_in_memory(memory) == kernel
    finally:
        memory.close()
