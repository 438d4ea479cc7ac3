"""CPU hotplug pieces that need no guest: QEMU's slot list, the device_add arguments, the
ELF core headers read from a RAM file, the TCG command line, and the expectation keys."""

import json
import struct
from pathlib import Path

from recorded import DATA

from labctl.config.schema import load_scenario
from labctl.evidence.segments import Segment, SegmentTable
from labctl.guest.machine import MachineSpec, qemu_argv
from labctl.guest.memory import GuestMemory
from labctl.pair.hotplug import cpu_device, free_slots, headers_facts

ROOT = Path(__file__).resolve().parents[2]
SOCKS = (Path("r"), Path("c"), Path("t"), Path("q"))


def test_recorded_slot_list_gives_the_free_slot_as_device_add_arguments():
    """QEMU 7.2, -cpu max -smp 1,maxcpus=2: one plugged slot (qom-path), one free."""
    slots = json.loads((DATA / "qemu-7.2" / "query-hotpluggable-cpus-smp1-maxcpus2.json").read_text())
    free = free_slots(slots)
    assert len(free) == 1
    assert cpu_device(free[0], "hotcpu0") == {"driver": "max-x86_64-cpu", "id": "hotcpu0",
                                              "core-id": 1, "thread-id": 0, "socket-id": 0}


def elf_core_headers(notes: list[int], loads: int) -> bytes:
    """An ELF64 core header with PT_NOTE entries at `notes` and `loads` PT_LOAD entries."""
    phnum = len(notes) + loads
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    phdrs = b"".join(struct.pack("<IIQQQQQQ", 4, 0, n, 0, n, 0x100, 0x100, 0) for n in notes)
    phdrs += b"".join(struct.pack("<IIQQQQQQ", 1, 7, 0x100000 * (i + 1), 0, 0, 0x1000, 0x1000, 0)
                      for i in range(loads))
    return ehdr + phdrs


def test_headers_facts_read_the_segment_from_guest_ram(tmp_path):
    ram = tmp_path / "ram"
    ram.write_bytes(bytes(0x10000))
    memory = GuestMemory(ram)
    try:
        table = SegmentTable((Segment(index=0, mem=0x2000, memsz=0x2000, bufsz=0x1000, role="elfcorehdr"),))
        memory.write(0x2000, elf_core_headers([0x3E639400, 0x11DE000], 3))
        before = headers_facts(memory, table)
        assert (before["pt_note"], before["pt_load"], before["phnum"]) == (2, 3, 5)
        assert before["note_addresses"] == ["0x3e639400", "0x11de000"]
        memory.write(0x2000, elf_core_headers([0x3E639400, 0x3E739400, 0x11DE000], 3))
        after = headers_facts(memory, table)
        assert after["pt_note"] == 3 and after["sha256"] != before["sha256"]
        memory.write(0x2000, b"garbage!")
        assert "not an ELF header" in headers_facts(memory, table)["error"]
        assert "no elfcorehdr" in headers_facts(memory, SegmentTable(()))["error"]
    finally:
        memory.close()


def test_room_to_hot_add_changes_the_tcg_command_line_only_then():
    plain = qemu_argv(MachineSpec(kernel=Path("k"), initrd=Path("i"), cmdline="", smp=2), *SOCKS)
    assert plain[plain.index("-cpu") + 1] == "max" and "-smbios" not in plain
    assert plain[plain.index("-smp") + 1] == "2"
    spec = MachineSpec(kernel=Path("k"), initrd=Path("i"), cmdline="", smp=1, maxcpus=2)
    argv = qemu_argv(spec, *SOCKS)
    assert argv[argv.index("-smp") + 1] == "1,maxcpus=2"
    assert argv[argv.index("-cpu") + 1] == "max,-hypervisor"
    assert argv[argv.index("-smbios") + 1].startswith("type=1,serial=VMware")
    kvm = qemu_argv(MachineSpec(**{**spec.__dict__, "accel": "kvm"}), *SOCKS)
    assert kvm[kvm.index("-cpu") + 1] == "host" and "-smbios" not in kvm


def test_hotplug_scenarios_resolve_their_dump_expectations_per_kernel():
    scenario = load_scenario(ROOT / "scenarios" / "cpu-hotplug.yaml")
    assert scenario.hotplug.cpus == 1 and not scenario.hotplug.reload
    assert (scenario.cpus.smp, scenario.cpus.maxcpus, scenario.trigger_cpu) == (1, 2, 1)
    hotplug_612 = scenario.expect.resolve("debian-6.12", {"CONFIG_CRASH_HOTPLUG": "y"})
    assert (hotplug_612.prstatus_notes, hotplug_612.elfcorehdr) == (2, "unchanged")
    assert "for_each_possible_cpu" in hotplug_612.reason
    old = scenario.expect.resolve("debian-6.1", {})
    assert (old.outcome, old.prstatus_notes) == ("capture-booted", 1)
    reload = load_scenario(ROOT / "scenarios" / "cpu-hotplug-reload.yaml")
    assert reload.hotplug.reload and reload.expect.resolve("debian-6.1", {}).prstatus_notes == 2


def test_recorded_hotplug_dumps_against_each_kernels_expectation():
    """6.1 described only the CPUs present at load: the hot-added CPU that panicked has no
    note; 6.12 described every possible CPU: both notes.  The default expectation (one note
    per online CPU) would fail 6.1, which is why the scenario says what 6.1 does and why."""
    from recorded import control_messages

    from labctl.evidence.smp import cpu_watch
    from labctl.evidence.vmcore import check_vmcore
    scenario = load_scenario(ROOT / "scenarios" / "cpu-hotplug.yaml")
    for kernel, symbols, notes in (("debian-6.1", {}, 1), ("debian-6.12", {"CONFIG_CRASH_HOTPLUG": "y"}, 2)):
        messages = control_messages(kernel, "cpu-hotplug")
        online = next(m for m in messages if m["type"] == "cpus")
        capture = next(m for m in messages if m["type"] == "hello" and m["role"] == "capture")
        verdict = {"capture_cpus": capture["cpus"],
                   "vmcore": check_vmcore(capture["vmcore_size"], capture["vmcore_head"], capture["release"])}
        assert verdict["vmcore"]["prstatus_notes"] == notes
        hotplug = json.loads((DATA / kernel / "cpu-hotplug" / "result.json").read_text())["evidence"]["hotplug"]
        expected = scenario.expect.resolve(kernel, symbols)
        facts = cpu_watch(online, None, expected, hotplug).evidence(verdict)
        assert [p for p in facts["problems"] if "PRSTATUS" in p or "ELF core" in p] == []
        assert facts["capture_apicid"] == 1 and facts["elfcorehdr_after_hotplug"] == "unchanged"
        default = cpu_watch(online, None, None, hotplug).evidence(verdict)
        assert any("PRSTATUS" in p for p in default["problems"]) == (notes == 1)


def test_room_for_a_dimm_and_its_qmp_arguments():
    from labctl.pair.hotplug import dimm_device
    spec = MachineSpec(kernel=Path("k"), initrd=Path("i"), cmdline="", hotplug_memory_mib=128)
    argv = qemu_argv(spec, *SOCKS)
    assert argv[argv.index("-m") + 1] == "1024M,slots=1,maxmem=1152M"
    assert "size=1024M" in argv[argv.index("-object") + 1]  # the RAM file stays 1 GiB
    backend, device = dimm_device("hotmem0", 128, Path("/run/x/hotmem0.ram"))
    assert backend == {"qom-type": "memory-backend-file", "id": "hotmem0", "size": 128 << 20,
                       "mem-path": "/run/x/hotmem0.ram", "share": True}  # the host reads it
    assert device == {"driver": "pc-dimm", "id": "hotmem0-dimm", "memdev": "hotmem0"}


def test_a_dimm_in_the_dump_must_match_what_the_headers_describe():
    from labctl.evidence.smp import CpuWatch
    dimm = {"address": "0x100000000", "size": "0x8000000"}
    covering = {"load_ranges": [["0x100000", "0x3fee0000"], ["0x100000000", "0x108000000"]],
                "prstatus_notes": 1}
    missing = {"load_ranges": [["0x100000", "0x3fee0000"]], "prstatus_notes": 1}
    for changed, vmcore, problem in ((True, covering, False), (False, missing, False),
                                     (False, covering, True), (True, missing, True)):
        watch = CpuWatch(online=[0], apicids=[[0, 0]],
                         hotplug={"elfcorehdr_changed": changed, "memory": {"dimm": dimm}})
        facts = watch.evidence({"capture_cpus": [[0, 0]], "vmcore": vmcore})
        assert facts["dump_covers_hot_memory"] == (vmcore is covering)
        assert any("hot-added DIMM" in p for p in facts["problems"]) == problem, facts["problems"]


def test_bytes_changed_counts_the_rewrite():
    from labctl.pair.hotplug import bytes_changed
    before = (0x2000, bytes(16))
    assert bytes_changed(before, (0x2000, bytes(4) + b"\x01\x02" + bytes(10))) == {
        "count": 2, "first": "0x4", "last": "0x5"}
    assert bytes_changed(before, before)["count"] == 0
    assert bytes_changed(before, (0x3000, bytes(16))) == {} and bytes_changed(None, before) == {}


def test_recorded_memory_hotplug_of_both_kernels():
    """The recorded runs: 6.12 rewrote 11 bytes of the headers (e_phnum and a new PT_LOAD
    for the DIMM at 4 GiB) and the dump covers the DIMM; 6.1 did neither."""
    from recorded import control_messages

    from labctl.evidence.smp import CpuWatch
    from labctl.evidence.vmcore import check_vmcore
    scenario = load_scenario(ROOT / "scenarios" / "memory-hotplug.yaml")
    for kernel, symbols, rewritten in (("debian-6.12", {"CONFIG_CRASH_HOTPLUG": "y"}, True),
                                       ("debian-6.1", {}, False)):
        hotplug = json.loads((DATA / kernel / "memory-hotplug" / "result.json").read_text())["evidence"]["hotplug"]
        capture = next(m for m in control_messages(kernel, "memory-hotplug") if m.get("role") == "capture")
        vmcore = check_vmcore(capture["vmcore_size"], capture["vmcore_head"], capture["release"])
        dimm = ["0x100000000", "0x108000000"]
        assert hotplug["memory"]["dimm"] == {"address": "0x100000000", "size": "0x8000000"}
        assert (dimm in vmcore["load_ranges"]) is rewritten is hotplug["elfcorehdr_changed"]
        assert (dimm in hotplug["elfcorehdr_after"]["load_ranges"]) is rewritten
        expected = scenario.expect.resolve(kernel, symbols)
        watch = CpuWatch(online=[0], apicids=[[0, 0]], hotplug=hotplug, expected_elfcorehdr=expected.elfcorehdr)
        facts = watch.evidence({"capture_cpus": capture["cpus"], "vmcore": vmcore})
        assert facts["problems"] == [] and facts["dump_covers_hot_memory"] is rewritten
    assert json.loads((DATA / "debian-6.12" / "memory-hotplug" / "result.json").read_text())[
        "evidence"]["hotplug"]["elfcorehdr_bytes_changed"] == {"count": 11, "first": "0x38", "last": "0x183"}
