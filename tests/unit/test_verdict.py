"""Verdict logic on recorded register dumps, control transcripts and vmcore heads."""

import pytest
from recorded import KERNELS, control_messages, message, registers, result

from labctl.evidence.segments import Segment, SegmentTable, parse_segment_table
from labctl.evidence.verdict import ParkWatch, is_self_jump, judge, parse_registers
from labctl.evidence.vmcore import check_vmcore

PURGATORY = Segment(index=1, mem=0x3DFFA000, memsz=0x5000, bufsz=0x4000, role="purgatory")
KERNEL = Segment(index=3, mem=0x3AC00000, memsz=0x37DC000, bufsz=0xB187C0, role="kernel")
TABLE = SegmentTable((PURGATORY, KERNEL))


@pytest.mark.parametrize("kernel", KERNELS)
def test_recorded_register_dump_shows_rip_in_purgatory(kernel):
    rips = parse_registers(registers(kernel, "crash-corrupt"))
    recorded = result(kernel, "crash-corrupt")
    parked = recorded["evidence"]["verdict"]["parked"]
    assert rips[parked["cpu"]] == int(parked["rip"], 16)
    table = parse_segment_table(message(kernel, "crash-corrupt", "loaded")["log"])
    assert table.containing(rips[parked["cpu"]]).role == "purgatory"
    assert is_self_jump(bytes.fromhex(parked["code"]))


def test_multi_cpu_dump_finds_each_rip():
    dump = ("CPU#0\nRAX=0 RBX=0\nRIP=ffffffff81000000 RFL=00000002\n"
            "CPU#1\nRAX=1\nRIP=000000003dffa12f RFL=00000002\n")
    assert parse_registers(dump) == {0: 0xFFFFFFFF81000000, 1: 0x3DFFA12F}
    assert parse_registers("nothing here") == {}


def test_parked_needs_two_equal_samples_in_purgatory_on_a_self_jump():
    code = {0x3DFFA12F: bytes.fromhex("ebfe9090"), 0x3DFFA200: bytes.fromhex("4889e5")}
    watch = ParkWatch(TABLE)
    watch.add({0: 0x3DFFA12F})
    assert watch.parked(code.get) is None  # one sample is not evidence
    watch.add({0: 0x3DFFA12F})
    parked = watch.parked(code.get)
    assert parked["cpu"] == 0 and parked["rip"] == "0x3dffa12f" and parked["code"] == "ebfe9090"
    assert parked["purgatory_offset"] == "0x12f"


def test_not_parked_when_moving_outside_purgatory_or_not_a_self_jump():
    code = {0x3DFFA200: bytes.fromhex("4889e5"), 0x3AC00010: bytes.fromhex("ebfe")}
    moving = ParkWatch(TABLE)
    moving.add({0: 0x3DFFA12F})
    moving.add({0: 0x3DFFA200})
    assert moving.parked(code.get) is None
    busy = ParkWatch(TABLE)
    busy.add({0: 0x3DFFA200})
    busy.add({0: 0x3DFFA200})
    assert busy.parked(code.get) is None  # in purgatory but hashing, not parked
    kernel = ParkWatch(TABLE)
    kernel.add({1: 0x3AC00010})
    kernel.add({1: 0x3AC00010})
    assert kernel.parked(code.get) is None  # a self-jump outside purgatory
    assert kernel.last_positions() == [{"cpu": 1, "rip": "0x3ac00010", "segment": "kernel"}]


def test_parked_cpu_need_not_be_cpu0():
    watch = ParkWatch(TABLE)
    watch.add({0: 0xFFFFFFFF81000000, 1: 0x3DFFA12F})
    watch.add({0: 0xFFFFFFFF81000000, 1: 0x3DFFA12F})
    assert watch.parked(lambda rip: b"\xe9\xfb\xff\xff\xff")["cpu"] == 1


@pytest.mark.parametrize("kernel", KERNELS)
def test_recorded_capture_hello_has_a_sane_vmcore(kernel):
    hello = message(kernel, "crash-intact", "hello", role="capture")
    release = result(kernel, "crash-intact")["kernel"]["release"]
    facts = check_vmcore(hello["vmcore_size"], hello["vmcore_head"], release)
    assert facts["ok"], facts["problems"]
    assert facts["e_type"] == "ET_CORE" and facts["pt_note"] >= 1 and facts["osrelease"] == release


def test_vmcore_problems_are_named():
    hello = message("debian-6.12", "crash-intact", "hello", role="capture")
    wrong = check_vmcore(hello["vmcore_size"], hello["vmcore_head"], "1.2.3-other")
    assert not wrong["ok"] and "OSRELEASE" in wrong["problems"][0]
    head = bytearray.fromhex(hello["vmcore_head"])
    head[16] = 2  # e_type ET_EXEC
    not_core = check_vmcore(hello["vmcore_size"], head.hex(), "x")
    assert any("not ET_CORE" in p for p in not_core["problems"])
    assert not check_vmcore(0, "", "x")["ok"]
    assert any("not a valid ELF" in p for p in check_vmcore(10, "00ff", "x")["problems"])


def test_judge():
    sane = {"vmcore": {"ok": True}}
    assert judge("capture-booted", "capture-booted", sane) == (True, "capture-booted as expected")
    broken = {"vmcore": {"ok": False, "problems": ["no PT_NOTE segment"]}}
    passed, reason = judge("capture-booted", "capture-booted", broken)
    assert not passed and "no PT_NOTE" in reason
    assert judge("purgatory-refused", "capture-booted", sane) == (
        False, "expected purgatory-refused, got capture-booted")
    assert judge("purgatory-refused", "purgatory-refused", {})[0]
    assert not judge("purgatory-refused", "hang", {})[0]


def test_judge_errno_and_recovery():
    enoexec = {"errno": 8}
    assert judge("load-rejected", "load-rejected", enoexec, "ENOEXEC") == (True, "load-rejected as expected (ENOEXEC)")
    passed, reason = judge("load-rejected", "load-rejected", {"errno": 22}, "ENOEXEC")
    assert not passed and reason == "load-rejected as expected, but with EINVAL instead of ENOEXEC"
    healthy = {"outcome": "capture-booted", "vmcore": {"ok": True}}
    assert judge("load-rejected", "load-rejected", enoexec, "ENOEXEC", healthy)[0]
    passed, reason = judge("load-rejected", "load-rejected", enoexec, "ENOEXEC", {"outcome": "hang"})
    assert not passed and "not healthy afterwards" in reason and "hang" in reason
    broken = {"outcome": "capture-booted", "vmcore": {"ok": False, "problems": ["no PT_NOTE segment"]}}
    assert not judge("load-accepted", "load-accepted", {}, None, broken)[0]


@pytest.mark.parametrize("kernel", KERNELS)
def test_recorded_kexec_load_refusal_parks_in_kexec_tools_purgatory(kernel):
    recorded = result(kernel, "crash-corrupt-kexec-load")
    parked = recorded["evidence"]["verdict"]["parked"]
    table = parse_segment_table(message(kernel, "crash-corrupt-kexec-load", "kexec-tool")["output"])
    rips = parse_registers(registers(kernel, "crash-corrupt-kexec-load"))
    assert table.containing(rips[parked["cpu"]]).role == "purgatory"
    assert is_self_jump(bytes.fromhex(parked["code"]))


@pytest.mark.parametrize("kernel", KERNELS)
def test_recorded_unload_then_panic_halts_without_capture(kernel):
    recorded = result(kernel, "unload-then-panic")
    assert recorded["evidence"]["unload"] == {"rc": 0, "kexec_crash_loaded": "0"}
    assert "end Kernel panic - not syncing: sysrq triggered crash" in recorded["evidence"]["verdict"]["console"]
    assert not any(m["type"] == "hello" and m.get("role") == "capture"
                   for m in control_messages(kernel, "unload-then-panic"))
