"""The dump check's rules: ranges, sampled pages and the log, on recorded and built dumps."""

from __future__ import annotations

import hashlib
import struct

import pytest
from recorded import DATA, message, result

from labctl.evidence import dump_check
from labctl.evidence.dump_check import PAGE, DumpFacts, expected_ranges, merge, subtract, verify
from labctl.evidence.verdict import judge
from labctl.guest.memory import GuestMemory
from labctl.result import Outcome

MIB = 1 << 20


def core_head(loads: list[tuple[int, int, int]]) -> bytes:
    """An ELF core head as /proc/vmcore serves it: one PT_NOTE, then PT_LOADs given as
    (file offset, paddr, size)."""
    phnum = 1 + len(loads)
    ehdr = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", 4, 0, 0x1000, 0, 0, 0, 0, 0)
    for offset, paddr, size in loads:
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, offset, 0xffff888000000000 + paddr, paddr,
                             size, size, 0)
    return ehdr + phdrs


@pytest.fixture
def ram(tmp_path):
    """A 16 MiB RAM file whose pages above 1 MiB each hold their own address."""
    path = tmp_path / "guest-ram"
    with open(path, "wb") as f:
        f.truncate(16 * MIB)
        for page in range(MIB, 16 * MIB, PAGE):
            f.seek(page)
            f.write(struct.pack("<Q", page) * 8)
    memory = GuestMemory(path)
    yield memory
    memory.close()


PRIMARY = {"system_ram": [[0x1000, 0x9fbff], [0x100000, 16 * MIB - 1]],
           "crashkernel": [12 * MIB, 14 * MIB - 1]}
# The dump of PRIMARY: 1 MiB .. 12 MiB and 14 MiB .. 16 MiB, back to back in the file.
GOOD_LOADS = [(0x2000, MIB, 11 * MIB), (0x2000 + 11 * MIB, 14 * MIB, 2 * MIB)]
PANIC = ["sysrq: Trigger a crash", "Kernel panic - not syncing: sysrq triggered crash"]
DMESG = {"type": "vmcore-dmesg", "rc": 0,
         "output": ["[    0.000000] Linux version 6.12.117", "[   11.574100] sysrq: Trigger a crash",
                    "[   11.574200] Kernel panic - not syncing: sysrq triggered crash",
                    "[   11.574300] CPU: 0 UID: 0 PID: 131 Comm: kexec-lab-helpe Not tainted 6.12.117 #1"]}


def serve(facts: DumpFacts, memory: GuestMemory, where=lambda sample: sample.paddr) -> dict:
    """The capture helper's vmcore-pages reply, with each sample read from `where`."""
    pages = [[f"{s.offset:x}", hashlib.sha256(memory.read(where(s), PAGE)).hexdigest(), 0]
             for s in facts.samples]
    return {"type": "vmcore-pages", "page_size": PAGE, "pages": pages}


def facts_for(loads, memory, primary=PRIMARY, seed=7) -> DumpFacts:
    return DumpFacts(core_head(loads), primary, memory, PANIC, seed=seed)


def test_ranges_arithmetic():
    assert merge([(5, 9), (0, 3), (3, 4), (8, 12)]) == [(0, 4), (5, 12)]
    assert subtract([(0, 10)], (3, 5)) == [(0, 3), (5, 10)]
    assert expected_ranges(PRIMARY["system_ram"], PRIMARY["crashkernel"]) == \
        [(MIB, 12 * MIB), (14 * MIB, 16 * MIB)]


def test_an_intact_dump_passes_every_check(ram):
    facts = facts_for(GOOD_LOADS, ram)
    facts.replies = {"vmcore-pages": serve(facts, ram), "vmcore-dmesg": DMESG}
    evidence = verify(facts)
    assert evidence["ok"], evidence["problems"]
    assert evidence["pages"]["compared"] == 12  # first, last, 4 random per PT_LOAD
    kinds = [p["kind"] for p in evidence["pages"]["pages"]]
    assert kinds.count("first") == 2 and kinds.count("random") == 8
    assert evidence["log"]["found"][-1].startswith("Kernel panic - not syncing")


def test_random_pages_come_from_the_seed_and_hold_data(ram, tmp_path):
    one, two = facts_for(GOOD_LOADS, ram, seed=1), facts_for(GOOD_LOADS, ram, seed=1)
    assert [s.paddr for s in one.samples] == [s.paddr for s in two.samples]
    assert [s.paddr for s in one.samples] != [s.paddr for s in facts_for(GOOD_LOADS, ram, seed=2).samples]
    assert all(ram.read(s.paddr, PAGE) != bytes(PAGE) for s in one.samples)
    assert all(s.paddr >= MIB for s in one.samples)  # the capture kernel's own low memory


def test_a_dump_serving_other_memory_names_the_load_and_both_addresses(ram):
    """elfcorehdr's p_offset pointed elsewhere: the dump serves the page 1 MiB lower."""
    facts = facts_for(GOOD_LOADS, ram)
    shifted = lambda s: s.paddr - MIB if s.load.index == 1 else s.paddr  # noqa: E731
    facts.replies = {"vmcore-pages": serve(facts, ram, shifted), "vmcore-dmesg": DMESG}
    evidence = verify(facts)
    assert not evidence["ok"]
    problem = evidence["problems"][0]
    last = facts.samples[6]  # the first page of PT_LOAD 1
    assert problem.startswith(f"PT_LOAD 1 (paddr {14 * MIB:#x}-{16 * MIB:#x}): the first page at "
                              f"paddr {last.paddr:#x} differs")
    assert f"the dump serves the RAM file's page at {last.paddr - MIB:#x}" in problem
    passed, reason = judge("capture-booted", Outcome.DUMP_MISMATCH, {"dump": evidence})
    assert not passed and "PT_LOAD 1" in reason and "differs" in reason


def test_a_page_the_dump_cannot_serve_is_a_problem(ram):
    facts = facts_for(GOOD_LOADS, ram)
    reply = serve(facts, ram)
    reply["pages"][0][1:] = [None, 14]
    facts.replies = {"vmcore-pages": reply, "vmcore-dmesg": DMESG}
    assert "could not be read at offset 0x2000 (paddr 0x100000, errno 14)" in verify(facts)["problems"][0]


@pytest.mark.parametrize("loads, problem", [
    # the last 2 MiB of RAM left out (p_filesz cut short)
    ([(0x2000, MIB, 11 * MIB)], "System RAM 0xe00000-0x1000000 of the crashed kernel is not in the dump"),
    # the reservation served as if it were the crashed kernel's memory
    ([(0x2000, MIB, 15 * MIB)], "PT_LOAD 0 (paddr 0x100000-0x1000000): 0xc00000-0xe00000 is not System RAM"),
])
def test_ranges_must_be_system_ram_minus_the_reservation(ram, loads, problem):
    facts = facts_for(loads, ram)
    facts.replies = {"vmcore-pages": serve(facts, ram), "vmcore-dmesg": DMESG}
    assert any(p.startswith(problem) for p in verify(facts)["problems"]), verify(facts)["problems"]


def test_low_memory_may_be_left_out_or_served_from_a_backup(ram):
    """x86 kexec_file_load leaves out the low 1 MiB; kexec-tools serves 0-640K from a copy,
    which must be what the crashed kernel had there at the trigger (the capture kernel runs
    in low memory afterwards)."""
    at_trigger = bytes(range(256)) * (MIB // 256)
    backup = [(0x2000 + 13 * MIB, 0, 0xa0000)] + GOOD_LOADS
    facts = DumpFacts(core_head(backup), PRIMARY, ram, PANIC, seed=7, low_memory=at_trigger)
    assert {s.truth for s in facts.samples if s.load.index == 0} == {"ram-at-trigger"}
    low = {s.offset: at_trigger[s.paddr:s.paddr + PAGE] for s in facts.samples if s.paddr < MIB}
    pages = serve(facts, ram)
    pages["pages"] = [[o, hashlib.sha256(low[int(o, 16)]).hexdigest() if int(o, 16) in low else d, e]
                      for o, d, e in pages["pages"]]
    facts.replies = {"vmcore-pages": pages, "vmcore-dmesg": DMESG}
    evidence = verify(facts)
    assert evidence["ok"], evidence["problems"]
    assert evidence["ranges"]["low_memory"].startswith("served by PT_LOAD 0")
    # the capture kernel's own low memory served instead of the crashed kernel's copy
    facts.replies["vmcore-pages"] = serve(facts, ram)
    evidence = verify(facts)
    assert evidence["causes"] == ["low-memory"]
    assert "PT_LOAD 0 (paddr 0x0-0xa0000): the first page at paddr 0x0 differs: dump sha256 " \
        in evidence["problems"][0] and "!= the RAM at the trigger's" in evidence["problems"][0]


def test_the_log_out_of_the_dump_must_hold_the_console_panic_lines(ram):
    facts = facts_for(GOOD_LOADS, ram)
    facts.replies = {"vmcore-pages": serve(facts, ram),
                     "vmcore-dmesg": {**DMESG, "output": DMESG["output"][:2]}}
    assert verify(facts)["problems"] == [
        "the log in the dump lacks 'Kernel panic - not syncing: sysrq triggered crash', "
        "which the console showed"]


def test_vmcore_dmesg_failing_is_a_problem(ram):
    facts = facts_for(GOOD_LOADS, ram)
    facts.replies = {"vmcore-pages": serve(facts, ram),
                     "vmcore-dmesg": {"type": "vmcore-dmesg", "rc": 1,
                                      "output": ["Missing the log_buf symbol"]}}
    assert verify(facts)["problems"] == ["vmcore-dmesg could not read the log out of the dump "
                                         "(rc 1): Missing the log_buf symbol"]


def test_checks_can_be_extended():
    """Issue 16 adds a per-CPU PRSTATUS check by adding to CHECKS."""
    assert list(dump_check.CHECKS) == ["ranges", "sources", "pages", "log", "cpus"]


# ------------------------------------------------------------------ recorded runs
RECORDED = [("debian-6.12", "crash-intact-dump-check"), ("debian-6.1", "crash-intact-dump-check"),
            ("debian-6.12", "crash-intact-kexec-load-dump-check"),
            ("recipes/tiny-6.12-serial", "crash-intact-dump-check")]


def recorded_facts(kernel: str, scenario: str, memory: GuestMemory) -> DumpFacts:
    primary = message(kernel, scenario, "hello", role="primary")
    capture = message(kernel, scenario, "hello", role="capture")
    facts = DumpFacts(bytes.fromhex(capture["vmcore_head"]), primary, memory, PANIC, seed=1)
    facts.replies = {kind: message(kernel, scenario, kind) for kind in ("vmcore-pages", "vmcore-dmesg")}
    return facts


@pytest.mark.parametrize("kernel, scenario", RECORDED)
def test_recorded_intact_dumps_cover_system_ram_and_hold_the_panic(kernel, scenario, ram):
    facts = recorded_facts(kernel, scenario, ram)
    ranges, log = dump_check.check_ranges(facts), dump_check.check_log(facts)
    assert ranges["problems"] == [] and ranges["dumped"] == ranges["expected"]
    assert log["problems"] == [] and log["found"] == PANIC
    # and the recorded verdict agrees: every sampled page matched the RAM file
    pages = result(kernel, scenario)["evidence"]["verdict"]["dump"]["pages"]
    assert pages["compared"] >= 12 and all(p["dump"] == p["ram_file"] for p in pages["pages"])


def test_recorded_kexec_tools_dump_serves_low_memory_and_is_accepted(ram):
    facts = recorded_facts("debian-6.12", "crash-intact-kexec-load-dump-check", ram)
    assert facts.loads[1].paddr == 0x1000  # kexec-tools' PT_LOAD for 0-640K
    assert dump_check.check_ranges(facts)["problems"] == []


def test_recorded_dump_missing_a_range_or_the_panic_is_caught(ram):
    facts = recorded_facts("debian-6.12", "crash-intact-dump-check", ram)
    facts.primary = {**facts.primary, "system_ram": facts.primary["system_ram"] + [[0x40000000, 0x4fffffff]]}
    assert dump_check.check_ranges(facts)["problems"] == [
        "System RAM 0x40000000-0x50000000 of the crashed kernel is not in the dump"]
    dmesg = facts.replies["vmcore-dmesg"]
    facts.replies["vmcore-dmesg"] = {**dmesg, "output": [x for x in dmesg["output"] if "sysrq: Trigger" not in x]}
    assert dump_check.check_log(facts)["problems"] == [
        "the log in the dump lacks 'sysrq: Trigger a crash', which the console showed"]


def test_recorded_damaged_dump_is_judged_on_what_differed():
    """corrupt-elfcorehdr-pt-load on debian-6.12: p_offset 0 for the RAM from 1 MiB."""
    recorded = result("debian-6.12", "corrupt-elfcorehdr-pt-load")
    evidence = recorded["evidence"]["verdict"]
    assert recorded["outcome"] == Outcome.DUMP_MISMATCH and recorded["passed"]
    first = evidence["dump"]["problems"][0]
    assert first.startswith("PT_LOAD 1 (paddr 0x100000-0x2e000000): the first page at paddr 0x100000 "
                            "differs") and first.endswith("(the dump serves the RAM file's page at 0x0)")
    passed, reason = judge("capture-booted", Outcome.DUMP_MISMATCH, evidence)
    assert not passed and reason.startswith("expected capture-booted, got dump-mismatch: PT_LOAD 1")
    passed, reason = judge(Outcome.DUMP_MISMATCH, Outcome.DUMP_MISMATCH, evidence)
    assert passed and "paddr 0x100000" in reason


def dimm_file(tmp_path, base: int, size: int) -> GuestMemory:
    """A hot-added DIMM's backing file, each page holding its own address."""
    path = tmp_path / "dimm"
    with open(path, "wb") as f:
        f.truncate(size)
        for page in range(0, size, PAGE):
            f.seek(page)
            f.write(struct.pack("<Q", base + page) * 8)
    return GuestMemory(path, base)


def test_hot_added_memory_is_sampled_from_the_dimm_file(ram, tmp_path):
    """A DIMM hot-added at 4 GiB has its own backing file: its PT_LOAD is allowed (smp.py
    judges whether it should be there) and sampled against that file at the DIMM's address."""
    dimm = (1 << 32, (1 << 32) + 8 * MIB)
    hot = dimm_file(tmp_path, dimm[0], 8 * MIB)
    loads = GOOD_LOADS + [(0x2000 + 13 * MIB, dimm[0], 8 * MIB)]
    facts = DumpFacts(core_head(loads), PRIMARY, ram, PANIC, seed=3, hot_added=[dimm], hot_memory=[hot])
    facts.replies = {"vmcore-pages": serve_all(facts), "vmcore-dmesg": DMESG}
    evidence = verify(facts)
    assert evidence["ok"], evidence["problems"]
    assert {p["truth"] for p in evidence["pages"]["pages"] if p["pt_load"] == 2} == {"dimm"}
    assert evidence["ranges"]["hot_added"] == ["0x100000000-0x100800000"]
    facts = DumpFacts(core_head(loads), PRIMARY, ram, PANIC, seed=3)  # no DIMM: a finding
    facts.replies = {"vmcore-pages": serve(facts, ram), "vmcore-dmesg": DMESG}
    problems = verify(facts)["problems"]
    assert "PT_LOAD 2 (paddr 0x100000000-0x100800000): 0x100000000-0x100800000 is not System RAM" \
        in problems[0]
    assert "PT_LOAD 2 (paddr 0x100000000-0x100800000): no memory the host can read holds it" in problems
    hot.close()


def serve_all(facts: DumpFacts, source=None) -> dict:
    """vmcore-pages as a capture kernel serving each PT_LOAD from `source(load)` (default:
    its physical address), reading the truth the host has there."""
    pages = []
    for s in facts.samples:
        paddr = s.paddr if source is None else source(s.load) + (s.paddr - s.load.paddr)
        kind = next(k for a, b, k in facts.truth.spans() if a <= paddr < b)
        pages.append([f"{s.offset:x}", hashlib.sha256(facts.truth.page(paddr, kind)).hexdigest(), 0])
    return {"type": "vmcore-pages", "page_size": PAGE, "pages": pages}


def with_offset(head: bytes, index: int, offset: int) -> bytes:
    """The ELF core headers with PT_LOAD `index`'s p_offset changed (a damaged elfcorehdr)."""
    loads = [i for i in range(struct.unpack_from("<H", head, 56)[0])
             if struct.unpack_from("<I", head, 64 + 56 * i)[0] == 1]
    where = 64 + 56 * loads[index] + 8
    return head[:where] + struct.pack("<Q", offset) + head[where + 8:]


def as_loaded(head: bytes) -> bytes:
    """The ELF core headers as the kernel wrote them in guest RAM: each PT_LOAD's p_offset
    is its physical address (/proc/vmcore's head has file offsets there instead)."""
    for index, load in enumerate(dump_check.dump_loads(head)):
        head = with_offset(head, index, load.paddr)
    return head


def test_recorded_hot_added_pt_load_served_from_elsewhere_names_the_cause(ram, tmp_path):
    """memory-hotplug on debian-6.12: the dump's head as recorded (PT_LOAD 3 is the DIMM at
    4 GiB).  If the ELF core headers in guest RAM point that PT_LOAD's p_offset elsewhere,
    /proc/vmcore serves other memory for it: dump-mismatch, cause pt-load-offset; if they
    are right but the pages differ, the cause is the hot-added memory's content."""
    head = bytes.fromhex(message("debian-6.12", "memory-hotplug", "hello", role="capture")["vmcore_head"])
    primary = {**message("debian-6.12", "memory-hotplug", "hello", role="primary"),
               "system_ram": [[0x1000, 0x9fbff], [0x100000, 0x3ffdffff]]}  # as crash-intact's
    dimm = (1 << 32, (1 << 32) + 128 * MIB)
    hot = dimm_file(tmp_path, dimm[0], 128 * MIB)
    big = tmp_path / "ram1g"
    with open(big, "wb") as f:
        f.truncate(1 << 30)
    memory = GuestMemory(big)
    loaded = as_loaded(head)
    bad = with_offset(loaded, 3, 1 << 20)  # the DIMM's PT_LOAD now says: serve 1 MiB onwards
    facts = DumpFacts(head, primary, memory, PANIC, seed=5, hot_added=[dimm], hot_memory=[hot], headers=bad)
    dmesg = {**DMESG, "output": [line.replace("PID: 131", "PID: 135") for line in DMESG["output"]]}
    facts.replies = {"vmcore-pages": serve_all(facts, lambda ld: 1 << 20 if ld.index == 3 else ld.paddr),
                     "vmcore-dmesg": dmesg}
    evidence = verify(facts)
    assert evidence["causes"] == ["pt-load-offset"], evidence["problems"]
    assert evidence["sources"]["problems"] == [
        "PT_LOAD 3 (paddr 0x100000000-0x108000000): the ELF core headers in guest RAM tell the "
        "capture kernel to serve it from 0x100000, not from its physical address"]
    assert judge(Outcome.DUMP_MISMATCH, dump_check.outcome(evidence), {"dump": evidence})[0]
    # right headers, wrong content in the DIMM's pages
    facts = DumpFacts(head, primary, memory, PANIC, seed=5, hot_added=[dimm], hot_memory=[hot], headers=loaded)
    facts.replies = {"vmcore-pages": serve_all(facts), "vmcore-dmesg": dmesg}
    assert verify(facts)["ok"], verify(facts)["problems"]
    sample = next(s for s in facts.samples if s.truth == "dimm" and s.kind == "last")
    hot.write(sample.paddr, b"corrupted")  # the DIMM changed after the dump served it
    evidence = verify(facts)
    assert evidence["causes"] == ["hot-added-memory"]
    assert evidence["problems"][0].startswith("PT_LOAD 3 (paddr 0x100000000-0x108000000): the last "
                                              "page at paddr 0x107fff000 differs")
    memory.close()
    hot.close()


def test_a_capture_initramfs_without_its_reader_is_damaged(ram):
    """vmcore-dmesg missing (ENOENT) is capture-damaged, never 'not checked'; only an
    architecture declared to have no reader leaves the log unchecked, and says so."""
    facts = facts_for(GOOD_LOADS, ram)
    missing = {"type": "error", "what": "/sbin/vmcore-dmesg", "errno": 2, "strerror": "No such file"}
    facts.replies = {"vmcore-pages": serve(facts, ram), "vmcore-dmesg": missing}
    evidence = verify(facts)
    assert evidence["causes"] == ["missing-reader"]
    assert dump_check.outcome(evidence) == Outcome.CAPTURE_DAMAGED
    facts.no_reader = "riscv64: Debian 12 has no riscv64 port, so the lab has no vmcore-dmesg for it"
    evidence = verify(facts)
    assert evidence["ok"] and evidence["unchecked"][0].startswith("log: riscv64: Debian 12")


def test_what_the_dump_check_could_not_check_is_said_in_the_pass_line(ram):
    facts = facts_for(GOOD_LOADS, ram)
    facts.no_reader, facts.symbols_missing = "Debian 12 has no riscv64 port", "drgn is not installed"
    facts.replies = {"vmcore-pages": serve(facts, ram),
                     "vmcore-dmesg": {"type": "error", "what": "/sbin/vmcore-dmesg", "errno": 2}}
    passed, reason = judge("capture-booted", "capture-booted", {"dump": verify(facts), "vmcore": {"ok": True}})
    assert passed and reason == ("capture-booted as expected; not checked: log: Debian 12 has no "
                                 "riscv64 port; cpus: the PCs in the notes are not named: drgn is not installed")


def test_recorded_hot_added_dimm_the_capture_kernel_took_is_unreadable():
    """memory-hotplug-capture-acpi on debian-6.12: the headers describe the DIMM, but the
    capture kernel hot-added it as its own RAM ("ioremap on RAM"), so every sampled page of
    that PT_LOAD is unreadable: dump-mismatch, cause page-unreadable, naming PT_LOAD 3 only."""
    recorded = result("debian-6.12", "memory-hotplug-capture-acpi")
    dump = recorded["evidence"]["verdict"]["dump"]
    assert (recorded["outcome"], recorded["passed"], dump["causes"]) == \
        (Outcome.DUMP_MISMATCH, True, ["page-unreadable"])
    unreadable = [p for p in dump["pages"]["pages"] if p["dump"] is None]
    assert {p["pt_load"] for p in unreadable} == {3} and {p["truth"] for p in unreadable} == {"dimm"}
    assert all(p["dump"] == p["ram_file"] for p in dump["pages"]["pages"] if p["pt_load"] != 3)
    assert all(problem.startswith("PT_LOAD 3 (paddr 0x100000000-0x108000000): /proc/vmcore could not "
                                  "be read") and problem.endswith("errno 14)") for problem in dump["problems"])
    log = (DATA / "debian-6.12" / "memory-hotplug-capture-acpi" / "serial-ioremap.log").read_text()
    assert "ioremap on RAM at 0x0000000100000000" in log
