"""Several CPUs end to end: a panic on CPU 1 of a 2-vCPU guest (refused and intact), a CPU
and a DIMM hot-added after the load, on both Debian kernels.  One `labctl run` per kernel."""

from __future__ import annotations

import pytest

from conftest import labctl

pytestmark = pytest.mark.e2e

KERNELS = ["debian-6.12", "debian-6.1"]
SCENARIOS = ["crash-corrupt-cpu1", "crash-intact-cpu1", "cpu-hotplug", "memory-hotplug"]


@pytest.fixture(scope="module", params=KERNELS)
def smp_runs(request):
    return request.param, labctl("run", *SCENARIOS, "--kernel", request.param, timeout=900)


def cpus(result: dict) -> dict:
    return result["evidence"]["verdict"]["cpus"]


def test_all_pass(smp_runs):
    kernel, run = smp_runs
    assert run.returncode == 0, run.stdout + run.stderr
    assert {s: (r["outcome"], r["passed"]) for s, r in run.results.items()} == {
        s: ("purgatory-refused" if "corrupt" in s else "capture-booted", True) for s in SCENARIOS}, run.stdout


def test_refused_on_cpu1_parks_vcpu1_and_stops_cpu0(smp_runs):
    _, run = smp_runs
    result = run.results["crash-corrupt-cpu1"]
    facts = cpus(result)
    assert result["outcome"] == "purgatory-refused" and facts["problems"] == []
    assert (facts["requested"], facts["pinned"], facts["panic_cpu"]) == (1, 1, 1)
    assert facts["panic_cpu_from"] == "console" and facts["panic_cpu_line"].startswith("CPU: 1 ")
    assert result["evidence"]["verdict"]["parked"]["cpu"] == facts["parked_vcpu"] == 1
    cpu0 = facts["others"]["0"]  # halted, or woken and spinning in the stop loop (6.1)
    assert cpu0["role"].startswith("stopped") and not cpu0["interrupts"] and cpu0["cpl"] == 0
    assert int(cpu0["rip"], 16) >= 0xFFFF800000000000
    assert (result["_dir"] / "registers.txt").read_text().count("RIP=") == 2


def test_intact_on_cpu1_boots_the_capture_kernel_there_with_two_notes(smp_runs):
    _, run = smp_runs
    result = run.results["crash-intact-cpu1"]
    facts = cpus(result)
    assert result["outcome"] == "capture-booted" and facts["problems"] == []
    assert facts["panic_cpu"] == 1 and facts["capture_apicid"] == dict(map(tuple, facts["apicids"]))[1]
    assert facts["dump_prstatus_notes"] == 2 == result["evidence"]["verdict"]["vmcore"]["prstatus_notes"]
    assert facts["others"]["0"]["role"].startswith("stopped")


def test_hotplug_after_the_load(smp_runs):
    kernel, run = smp_runs
    result = run.results["cpu-hotplug"]
    hotplug = result["evidence"]["hotplug"]
    facts = cpus(result)
    assert facts["problems"] == [] and facts["panic_cpu"] == 1  # the panic ran on the new CPU
    assert hotplug["added"][0]["driver"].endswith("-x86_64-cpu")
    assert hotplug["guest"]["cpus_online"] == "0-1"
    assert hotplug["elfcorehdr_changed"] is False
    before = hotplug["elfcorehdr_before"]
    if kernel == "debian-6.12":  # every possible CPU described at load: nothing to rewrite
        assert before["pt_note"] == 3 and facts["dump_prstatus_notes"] == 2
        assert hotplug["guest"]["crash_hotplug"] == "1"
    else:  # the CPUs present at load: the hot-added one's note is missing from the dump
        assert before["pt_note"] == 2 and facts["dump_prstatus_notes"] == 1


def test_memory_hotplug_rewrites_the_headers_only_with_crash_hotplug(smp_runs):
    """6.12 writes a PT_LOAD for the DIMM over the elfcorehdr segment and the dump covers
    it; 6.1 leaves the headers as loaded and the dump misses it."""
    kernel, run = smp_runs
    result = run.results["memory-hotplug"]
    hotplug = result["evidence"]["hotplug"]
    facts = cpus(result)
    assert facts["problems"] == []
    dimm = hotplug["memory"]["dimm"]
    assert hotplug["memory"]["blocks_online_after"] > hotplug["memory"]["blocks_online_before"]
    before, after = hotplug["elfcorehdr_before"], hotplug["elfcorehdr_after"]
    dimm_range = [dimm["address"], hex(int(dimm["address"], 16) + int(dimm["size"], 16))]
    rewritten = kernel == "debian-6.12"
    assert hotplug["elfcorehdr_changed"] is rewritten and facts["dump_covers_hot_memory"] is rewritten
    assert (hotplug["elfcorehdr_bytes_changed"]["count"] > 0) is rewritten
    assert (after["pt_load"] == before["pt_load"] + 1) is rewritten
    assert (dimm_range in after["load_ranges"]) is rewritten
    assert (dimm_range in result["evidence"]["verdict"]["vmcore"]["load_ranges"]) is rewritten
    # the DIMM's PT_LOAD read by content, against the DIMM's own backing file
    pages = result["evidence"]["verdict"]["dump"]["pages"]["pages"]
    dimm_pages = [p for p in pages if p["truth"] == "dimm"]
    assert (len(dimm_pages) >= 3) is rewritten and all(p["dump"] == p["ram_file"] for p in dimm_pages)
