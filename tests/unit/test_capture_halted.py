"""capture-halted: a vCPU stopped for good in the crashkernel reservation, on recorded registers."""

from __future__ import annotations

import json

import pytest
from recorded import DATA, registers

from labctl.config.arch import get_arch
from labctl.config.cause_names import FAULT_LOOP
from labctl.evidence.causes import classify
from labctl.evidence.identity import fault_loop_vote
from labctl.evidence.segments import Segment, SegmentTable
from labctl.evidence.verdict import FAULT_LOOP_SAMPLES, ParkWatch, judge, parse_halted, parse_registers
from labctl.result import Outcome

HALTED = DATA / "recipes" / "tiny-6.12-no-digest" / "crash-corrupt-halted"
RECORDED = json.loads((HALTED / "result.json").read_text())
EVIDENCE = RECORDED["evidence"]["verdict"]["halted"]
RIP = int(EVIDENCE["rip"], 16)
CRASHKERNEL = (0x2F000000, 0x3EFFFFFF)


def table() -> SegmentTable:
    segments = RECORDED["evidence"]["load"]["segments"]["segments"]
    return SegmentTable(tuple(Segment(s["index"], int(s["mem"], 16), int(s["memsz"], 16),
                                      int(s["bufsz"], 16), s["role"]) for s in segments))


def code_at(address: int) -> bytes:
    """Guest bytes as recorded: `hlt` (f4) then `jmp .-1` (eb fd) at the halted RIP."""
    return {RIP: bytes.fromhex(EVIDENCE["code"]), RIP - 1: b"\xf4" + bytes.fromhex(EVIDENCE["code"])}.get(
        address, b"\x90" * 8)


def watch_with(text: str, samples: int = 2) -> ParkWatch:
    watch = ParkWatch(table())
    for _ in range(samples):
        watch.add(parse_registers(text), parse_halted(text))
    return watch


def test_the_negative_control_halts_in_its_decompressor_with_interrupts_off():
    text = (HALTED / "registers.txt").read_text()
    assert parse_halted(text) == {0} and parse_registers(text) == {0: RIP}
    found = watch_with(text).stopped(code_at, CRASHKERNEL)
    assert found["how"] == "hlt with interrupts off" and found["segment"] == "kernel"
    assert found["rip"] == hex(RIP) and found["segment_offset"] == EVIDENCE["segment_offset"]
    assert RECORDED["outcome"] == "capture-halted" and RECORDED["timings"]["panic_to_verdict"] < 10


def test_one_sample_or_a_moving_rip_is_not_enough():
    text = (HALTED / "registers.txt").read_text()
    assert watch_with(text, samples=1).stopped(code_at, CRASHKERNEL) is None
    watch = watch_with(text, samples=1)
    moved = text.replace(f"RIP={RIP:016x}", f"RIP={RIP + 2:016x}")
    watch.add(parse_registers(moved), parse_halted(moved))
    assert watch.stopped(code_at, CRASHKERNEL) is None


def test_a_hlt_that_an_interrupt_can_end_is_an_idle_kernel_not_a_dead_one():
    text = (HALTED / "registers.txt").read_text().replace("RFL=00000006", "RFL=00000206")
    assert parse_halted(text) == set()
    assert watch_with(text).stopped(code_at, CRASHKERNEL) is None


def test_outside_the_reservation_or_in_purgatory_it_is_something_else():
    text = (HALTED / "registers.txt").read_text()
    assert watch_with(text).stopped(code_at, (0x1000000, 0x2000000)) is None  # the crashed kernel's
    assert watch_with(text).stopped(code_at, None) is None
    refused = registers("debian-6.12", "crash-corrupt")  # parked in purgatory on a jump-to-self
    rip = parse_registers(refused)[0]
    watch = ParkWatch(SegmentTable((Segment(1, rip & ~0xFFF, 0x5000, 0x4000, "purgatory"),)))
    watch.add(parse_registers(refused), parse_halted(refused))
    watch.add(parse_registers(refused), parse_halted(refused))
    assert watch.stopped(lambda a: b"\xeb\xfe", (rip - 0x1000000, rip + 0x1000000)) is None
    assert watch.parked(lambda a: b"\xeb\xfe")["cpu"] == 0


@pytest.mark.parametrize("code, how", [(b"\xeb\xfe", "jump-to-self"), (b"\xe9\xfb\xff\xff\xff", "jump-to-self")])
def test_a_self_jump_in_the_capture_kernel_counts_whatever_the_flags(code, how):
    text = (HALTED / "registers.txt").read_text().replace("HLT=1", "HLT=0")
    found = watch_with(text).stopped(lambda a: code if a == RIP else b"", CRASHKERNEL)
    assert found["how"] == how


# ------------------------------------------------------------------ capture-damaged
DAMAGED = DATA / "recipes" / "tiny-6.12-no-digest" / "corrupt-initrd-damaged"


def test_a_damaged_capture_initramfs_is_named_by_its_init():
    """The negative control boots a corrupted initrd: init's SHA-256 check names the file,
    instead of a helper that never answers (this pair used to end as hang at 90 s)."""
    from labctl.evidence.verdict import judge
    from labctl.pair.steps import INITRAMFS_DAMAGED
    from labctl.result import Outcome

    lines = [m[0].rstrip("\r\n") for m in INITRAMFS_DAMAGED.finditer((DAMAGED / "serial.log").read_text())]
    assert lines == ["kexec-lab: initramfs damaged: /bin/kexec-lab-helper: FAILED sha256sum: "
                     "WARNING: 1 of 6 computed checksums did NOT match "]
    recorded = json.loads((DAMAGED / "result.json").read_text())
    assert recorded["outcome"] == Outcome.CAPTURE_DAMAGED and recorded["timings"]["panic_to_verdict"] < 15
    passed, reason = judge("purgatory-refused", Outcome.CAPTURE_DAMAGED, recorded["evidence"]["verdict"])
    assert not passed and reason.startswith("expected purgatory-refused, got capture-damaged")


def test_the_manifest_is_what_busybox_sha256sum_checks(tmp_path):
    import hashlib
    import subprocess

    from labctl.guest.assets import manifest_bytes

    init, helper = b"#!/bin/sh\n", b"\x7fELF"
    text = manifest_bytes({"init": init, "/bin/helper": helper}).decode()
    assert text == (f"{hashlib.sha256(helper).hexdigest()}  /bin/helper\n"
                    f"{hashlib.sha256(init).hexdigest()}  /init\n")
    # the same format, relative to a directory, passes and fails busybox's own check
    (tmp_path / "init").write_bytes(b"#!/bin/sh\n")
    (tmp_path / "list").write_text(text.splitlines()[1].replace("  /init", "  init") + "\n")
    check = ["busybox", "sha256sum", "-c", "-s", "list"]
    assert subprocess.run(check, cwd=tmp_path).returncode == 0
    (tmp_path / "init").write_bytes(b"#!/bin/sh\nX")
    assert subprocess.run(check, cwd=tmp_path).returncode != 0


# ------------------------------------------------------------ a fault loop (arm64, recorded)

ENTRY = DATA / "tiny-6.12-arm64" / "corrupt-kernel-entry"
ENTRY_RESULT = json.loads((ENTRY / "result.json").read_text())


def arm64_watch(samples: int) -> tuple[ParkWatch, int]:
    text = (ENTRY / "registers.txt").read_text()
    watch = ParkWatch(SegmentTable(()), get_arch("arm64"))
    for _ in range(samples):
        watch.add(parse_registers(text, get_arch("arm64")), parse_halted(text))
    return watch, parse_registers(text, get_arch("arm64"))[0]


def test_arm64_entered_with_zeros_re_takes_a_fault_at_the_old_kernels_vectors():
    """cpu_soft_restart() turned the MMU off and branched to a zeroed Image (x0 = the DTB):
    the UDF's exception goes to VBAR_EL1 + 0x200, a virtual address nothing maps any more."""
    watch, pc = arm64_watch(FAULT_LOOP_SAMPLES)
    text = (ENTRY / "registers.txt").read_text()
    assert pc & 0x7FF == 0x200 and pc >> 48 == 0xFFFF  # the synchronous current-EL vector, virtual
    assert "X00=000000007ec00000" in text  # the DTB address cpu_soft_restart passes in x0
    found = watch.faulting(lambda address: b"", lambda cpu, address: None)
    assert found == {"cpu": 0, "pc": hex(pc), "samples": FAULT_LOOP_SAMPLES, "how": FAULT_LOOP,
                     "detail": "no RAM at its pc and its MMU maps none there"}
    assert ENTRY_RESULT["evidence"]["verdict"]["halted"]["pc"] == hex(pc)
    assert classify(Outcome.CAPTURE_HALTED, {"halted": found}, [], "arm64") == {"causes": ["fault-loop"]}


def test_a_fault_loop_needs_three_samples_an_unfetchable_pc_and_no_mapping():
    watch, pc = arm64_watch(FAULT_LOOP_SAMPLES - 1)
    assert watch.faulting(lambda address: b"", lambda cpu, address: None) is None
    watch, pc = arm64_watch(FAULT_LOOP_SAMPLES)
    # RAM at that address, or an MMU that maps it: a kernel idling there, not a fault loop
    assert watch.faulting(lambda address: b"\x7f\x20\x03\xd5", lambda cpu, address: None) is None
    assert watch.faulting(lambda address: b"", lambda cpu, address: 0x4001_0A00) is None
    moved = (ENTRY / "registers.txt").read_text().replace(f"PC={pc:016x}", f"PC={pc + 4:016x}")
    watch.add(parse_registers(moved, get_arch("arm64")), parse_halted(moved))
    assert watch.faulting(lambda address: b"", lambda cpu, address: None) is None


def test_the_recorded_fault_loop_is_named_on_two_signals_within_a_second():
    verdict = ENTRY_RESULT["evidence"]["verdict"]
    assert ENTRY_RESULT["outcome"] == "capture-halted" and ENTRY_RESULT["passed"]
    assert {v["signal"] for v in verdict["identity"]["votes"] if v["says"] == "capture"} == \
        {"panic-unended", "fault-loop"}
    assert "disagreement" not in verdict["identity"]
    assert fault_loop_vote(verdict["halted"]).says == "capture"
    assert ENTRY_RESULT["timings"]["panic_to_verdict"] < 1.0  # not the (3x scaled) deadline
    assert judge("capture-halted", "capture-halted", verdict, expected_cause="fault-loop")[0]
    assert not judge("capture-halted", "capture-halted", verdict, expected_cause="hlt-in-kernel")[0]
