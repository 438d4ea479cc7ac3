"""Which kernel did what after the panic (evidence/identity.py), on recorded runs.

Each recorded run directory holds the console after the trigger (serial.log), the
result with the positions QEMU reported (result.json) and, for the quiet capture
kernel, the RAM around the records its log holds (ram-excerpts.json, read from the
RAM file at the verdict).  The console is replayed through the real reader; the
rules are applied as observe() applies them.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time

import pytest
from recorded import DATA, KERNELS

from labctl.evidence.identity import (
    CAPTURE,
    FULL_SCANS,
    PRIMARY,
    IdentityWatch,
    Position,
    RamLog,
    confirm,
    decide_end,
    page_table_root,
    parse_gpa,
    token_in,
    where_votes,
    with_token,
)
from labctl.evidence.verdict import judge
from labctl.guest.console import Console, StampedLog
from labctl.pair.steps import END_OF_PANIC, LINUX_BANNER, PANIC_LINE

F_SETPIPE_SZ = 1031  # fcntl.h (Linux)
STAMP = re.compile(r"^\[\s*[\d.]+\] ", re.MULTILINE)
PATTERNS = {"panic": PANIC_LINE, "end": END_OF_PANIC, "banner": LINUX_BANNER, **IdentityWatch.patterns}


def recorded(kernel: str, scenario: str) -> tuple[dict, str]:
    directory = DATA / kernel / scenario
    return json.loads((directory / "result.json").read_text()), \
        STAMP.sub("", (directory / "serial.log").read_text())


def replay(text: str, tmp_path, chunk: int | None = None) -> list[tuple[str, str]]:
    """The console's hits for this guest output, written at once or in chunks."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 1 << 20)  # room for a whole recorded console at once
    os.set_blocking(read_end, False)
    console = Console(read_end, StampedLog(tmp_path / "serial.log", time.monotonic()))
    data, hits = text.encode(), []
    step = chunk or len(data)
    try:
        for at in range(0, len(data), step):
            os.write(write_end, data[at:at + step])
            hits += console.poll(PATTERNS)
        return hits
    finally:
        console.close()
        os.close(read_end)
        os.close(write_end)


def positions_of(result: dict) -> list[Position]:
    return [Position(p["cpu"], int(p["pc"], 16), int(p["physical"], 16),
                     int(p["page_table_root"], 16) if p["page_table_root"] else None)
            for p in result["evidence"]["verdict"]["identity"]["positions"]]


def region_of(result: dict) -> tuple[int, int]:
    start, end = result["evidence"]["primary"]["crashkernel"]
    return start, end


class Ram:
    """The recorded excerpts of the RAM file, as GuestMemory's find/read/ranges."""

    def __init__(self, excerpts: dict[str, str]):
        self.parts = {int(a, 16): bytes.fromhex(h) for a, h in excerpts.items()}

    def ranges(self):
        return sorted((a, a + len(b)) for a, b in self.parts.items())

    def find(self, needle: bytes, start: int, end: int) -> int:
        for address, data in sorted(self.parts.items()):
            if address <= start < address + len(data):
                at = data.find(needle, start - address, end - address)
                return -1 if at < 0 else address + at
        return -1

    def read(self, address: int, length: int) -> bytes:
        base = next(a for a, b in self.parts.items() if a <= address < a + len(b))
        return self.parts[base][address - base:address - base + length]


def ram_log(kernel: str, token: str | None = None) -> RamLog:
    excerpts = json.loads((DATA / kernel / "capture-quiet-panic" / "ram-excerpts.json").read_text())
    ram = Ram(excerpts["excerpts"])
    log = RamLog(token or excerpts["token"], tuple(int(a, 16) for a in excerpts["region"]))
    log.scan(ram.find, ram.read, ram.ranges())
    return log


# ------------------------------------------------------------------ the console reader

def test_every_line_of_a_large_read_is_matched_once(tmp_path):
    """200 KB in one read: the old reader searched only its last 8 KiB."""
    filler = "x" * 100 + "\n"
    text = "Kernel panic - not syncing: first\n" + filler * 1000 + \
        "Kernel command line: middle\n" + filler * 1000 + "---[ end Kernel panic - not syncing: last ]---\n"
    hits = replay(text, tmp_path)
    assert [name for name, _ in hits] == ["panic", "cmdline", "end"]  # the end line once
    assert hits[0][1] == "Kernel panic - not syncing: first"


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_a_line_split_across_reads_is_matched_once(tmp_path, chunk):
    text = "noise\nKernel command line: a b labctl_run=0123456789abcdef\r\nmore\n" * 3
    hits = replay(text, tmp_path, chunk)
    assert hits == [("cmdline", "Kernel command line: a b labctl_run=0123456789abcdef")] * 3


def test_a_line_without_end_stays_bounded_and_what_follows_is_matched(tmp_path):
    hits = replay("y" * 200_000 + "\nKernel command line: after\n", tmp_path)
    assert hits == [("cmdline", "Kernel command line: after")]


# ------------------------------------------------------------------ recorded runs

@pytest.mark.parametrize("kernel", KERNELS)
def test_a_quiet_capture_kernel_that_panics_is_capture_panicked(kernel, tmp_path):
    """quiet loglevel=0: the console shows only the crashed kernel's panic (no banner, no
    command line, not even the capture kernel's panic); where the vCPU runs and the
    capture kernel's own log in its memory say which kernel panicked."""
    result, serial = recorded(kernel, "capture-quiet-panic")
    hits = replay(serial, tmp_path)
    assert {name for name, _ in hits} == {"panic"}  # no banner, no cmdline, no end line
    watch = IdentityWatch(result["evidence"]["load"]["capture_token"], ram_log(kernel))
    watch.console(hits)
    assert watch.ram and watch.ram.end_line and "VFS: Unable to mount root fs" in watch.ram.end_line
    positions = positions_of(result)
    claim, evidence = decide_end(watch, watch.ram.end_line, where_votes(positions, region_of(result)),
                                 positions)
    assert claim == CAPTURE and "disagreement" not in evidence
    assert {v["signal"] for v in evidence["votes"]} == {"pc", "page-tables", "panic-message",
                                                        "ram-cmdline", "ram-end"}
    assert watch.needs_ram()  # the console never showed the capture kernel's command line
    watch.console([("cmdline", f"Kernel command line: x labctl_run={watch.token}")])
    assert not watch.needs_ram()  # a console that shows notices shows a panic too
    assert result["outcome"] == "capture-panicked" and result["passed"]
    assert result["evidence"]["verdict"]["cause"] == {"causes": ["no-root-fs"]}


@pytest.mark.parametrize("kernel", KERNELS)
def test_another_runs_token_finds_no_log_and_the_format_string_is_no_record(kernel):
    log = ram_log(kernel, token="0" * 16)
    assert log.log_at is None and log.end_line is None and log.votes() == []
    ram = Ram(json.loads((DATA / kernel / "capture-quiet-panic" / "ram-excerpts.json").read_text())["excerpts"])
    for _ in range(5):
        log.scan(ram.find, ram.read, ram.ranges())
    assert log.scans == FULL_SCANS  # whole-reservation scans stop: the record will not come
    assert ram_log(kernel).end_line.endswith(" ]---")  # cut at its own end, not the ring's leftovers


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_primary_replaying_its_log_is_not_a_capture_kernel(kernel, tmp_path):
    """panic_print=0x20: the crashed kernel prints its own banner and command line again
    after the panic; the old rule (a banner after the trigger) called it capture-panicked."""
    result, serial = recorded(kernel, "unload-then-panic-replay")
    hits = replay(serial, tmp_path)
    names = [name for name, _ in hits]
    assert "banner" in names and names.index("banner") < names.index("end")
    watch = IdentityWatch(result["evidence"]["load"]["capture_token"])
    watch.console(hits)
    end = next(line for name, line in hits if name == "end")
    positions = positions_of(result)
    claim, evidence = decide_end(watch, end, where_votes(positions, region_of(result)), positions)
    assert claim == PRIMARY and "disagreement" not in evidence
    assert {v["signal"] for v in evidence["votes"]} == {"pc", "page-tables", "console-cmdline",
                                                        "panic-message"}
    assert result["outcome"] == "panic-halted" and result["passed"]


def test_the_replay_with_a_vcpu_in_the_reservation_is_a_disagreement(tmp_path):
    """Where the vCPUs run against what the console says: named, and never a PASS."""
    result, serial = recorded("debian-6.12", "unload-then-panic-replay")
    hits = replay(serial, tmp_path)
    watch = IdentityWatch(result["evidence"]["load"]["capture_token"])
    watch.console(hits)
    start, _ = region_of(result)
    inside = [Position(0, 0xFFFFFFFF81000000, start + 0x1000, start + 0x2000)]
    claim, evidence = decide_end(watch, next(line for name, line in hits if name == "end"),
                                 where_votes(inside, region_of(result)), inside)
    assert claim == CAPTURE  # two console signals against two register signals: the pc decides...
    assert "console-cmdline says the primary kernel" in evidence["disagreement"]  # ...and it is named
    assert "panic-message says the primary kernel" in evidence["disagreement"]
    passed, reason = judge("capture-panicked", "capture-panicked", {"identity": evidence})
    assert not passed and "identity signals disagree" in reason
    passed, reason = judge("panic-halted", "capture-panicked", {"identity": evidence})
    assert not passed and "and the identity signals disagree" in reason


def test_a_recorded_capture_boot_rests_on_its_token_and_where_it_runs():
    result, _ = recorded("debian-6.12", "crash-intact-identity")
    identity = result["evidence"]["verdict"]["identity"]
    said = {v["signal"]: v["says"] for v in identity["votes"]}
    assert said["hello-cmdline"] == said["pc"] == said["page-tables"] == CAPTURE
    assert "disagreement" not in identity and result["passed"]
    token = result["evidence"]["load"]["capture_token"]
    assert token_in(result["evidence"]["verdict"]["capture_cmdline"]) == token


def test_a_hello_without_this_runs_token_is_a_finding():
    """A kernel that says hello after the panic but was not booted with this load's
    command line (another load's kernel, or a primary that rebooted)."""
    result, _ = recorded("debian-6.12", "crash-intact-identity")
    watch = IdentityWatch(result["evidence"]["load"]["capture_token"])
    positions = positions_of(result)
    votes = [watch.token_vote("hello-cmdline", "console=ttyS0,115200 crashkernel=256M panic=0"),
             *where_votes(positions, region_of(result))]
    evidence = confirm(CAPTURE, votes, positions)
    assert "hello-cmdline says the primary kernel" in evidence["disagreement"]
    passed, reason = judge("capture-booted", "capture-booted", {"vmcore": {"ok": True}, "identity": evidence})
    assert not passed and "identity signals disagree" in reason


def test_one_signal_is_not_enough():
    evidence = confirm(CAPTURE, [where_votes([Position(0, 0x1000, 0x1000)], (0x1000, 0x2000))[0]])
    assert evidence["disagreement"].startswith("only pc says the capture kernel")
    assert confirm(PRIMARY, [])["disagreement"].startswith("only no signal says")


def test_register_facts_per_architecture():
    x86 = (DATA / "debian-6.12" / "crash-corrupt" / "registers.txt").read_text()
    assert page_table_root("x86_64", x86) == 0x2E0E2000
    riscv = (DATA / "arch" / "registers-riscv64-j-self.txt").read_text()
    assert page_table_root("riscv64", riscv) is None  # satp mode Bare: translation off
    on = riscv.replace("satp     0000000000000000", "satp     8000000000080a12")
    assert page_table_root("riscv64", on) == 0x80A12000
    assert page_table_root("arm64", (DATA / "arch" / "registers-arm64-b-self.txt").read_text()) is None
    assert parse_gpa("gpa: 0x34e93f8f\r\n") == 0x34E93F8F and parse_gpa("Unmapped\r\n") is None


def test_the_token_goes_on_the_command_line_once():
    line = with_token("irqpoll nr_cpus=1", "0123456789abcdef")
    assert line == "irqpoll nr_cpus=1 labctl_run=0123456789abcdef"
    assert token_in(line) == "0123456789abcdef" and token_in("labctl_run=0123456789abcdefab") is None


@pytest.mark.parametrize("kernel, run, signals", [
    ("tiny-6.12-arm64", "crash-intact-kexec-load-identity", {"hello-cmdline", "console-cmdline",
                                                              "panic-unended", "pc"}),
    ("tiny-6.12-riscv64", "crash-intact-identity", {"hello-cmdline", "console-cmdline", "panic-unended",
                                                    "ram-cmdline", "pc", "page-tables"}),
])
def test_other_architectures_are_identified_by_pc_too(kernel, run, signals):
    """QEMU translates arm64's PC and riscv64's pc as it does RIP; riscv64's satp is a
    page-table root, arm64's dump shows none."""
    result = json.loads((DATA / kernel / run / "result.json").read_text())
    identity = result["evidence"]["verdict"]["identity"]
    assert {v["signal"] for v in identity["votes"]} == signals and "disagreement" not in identity
    positions = positions_of(result)
    assert where_votes(positions, region_of(result))[0].says == CAPTURE
    assert all(p.pc != p.physical for p in positions)  # a kernel virtual address, translated


def test_a_capture_kernel_running_in_a_hot_added_dimm_is_not_outvoted_by_its_page_tables():
    """memory-hotplug-capture-acpi on debian-6.12: the capture kernel onlines the DIMM the
    crashed kernel hot-added and keeps its page tables there, outside the reservation.  A
    root in memory either kernel may own says nothing (the matrix run that found it FAILed
    on 'page-tables says the primary kernel ... vCPU 0 0x1014ca000')."""
    result = json.loads((DATA / "debian-6.12" / "memory-hotplug-capture-acpi" / "result.json").read_text())
    positions, region = positions_of(result), region_of(result)
    dimm = result["evidence"]["hotplug"]["memory"]["dimm"]
    shared = ((int(dimm["address"], 16), int(dimm["address"], 16) + int(dimm["size"], 16)),)
    assert all(shared[0][0] <= p.root < shared[0][1] for p in positions)  # the capture kernel's tables
    assumed = {v.signal: v.says for v in where_votes(positions, region)}
    assert assumed == {"pc": CAPTURE, "page-tables": PRIMARY}  # what the DIMM-blind rule said
    votes = where_votes(positions, region, shared)
    assert [(v.signal, v.says) for v in votes] == [("pc", CAPTURE)]
    assert result["passed"] and "disagreement" not in result["evidence"]["verdict"]["identity"]
