"""The scenario catalogue end to end: a small CI subset (the full set runs in `labctl matrix`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_dump_verified, labctl

pytestmark = pytest.mark.e2e

SUBSET_6_12 = ["corrupt-elfcorehdr", "load-garbage", "unload-then-panic", "crash-intact-nmi",
               "crash-corrupt-kexec-load", "corrupt-elfcorehdr-pt-load"]


@pytest.fixture(scope="module")
def on_6_12():
    return labctl("run", *SUBSET_6_12, "--kernel", "debian-6.12")


@pytest.fixture(scope="module")
def on_6_1():
    return labctl("run", "corrupt-elfcorehdr", "--kernel", "debian-6.1")


def test_subset_passes(on_6_12, on_6_1):
    assert on_6_12.returncode == 0, on_6_12.stdout + on_6_12.stderr
    assert on_6_1.returncode == 0, on_6_1.stdout + on_6_1.stderr
    assert set(on_6_12.results) == set(SUBSET_6_12)


def test_elfcorehdr_expectation_follows_crash_hotplug(on_6_12, on_6_1):
    """6.12 has CONFIG_CRASH_HOTPLUG=y and leaves elfcorehdr out of the digest; 6.1 hashes it."""
    new, old = on_6_12.results["corrupt-elfcorehdr"], on_6_1.results["corrupt-elfcorehdr"]
    assert (new["expected"], new["outcome"]) == ("capture-booted", "capture-booted")
    assert "CONFIG_CRASH_HOTPLUG" in new["expectation_reason"]
    assert new["evidence"]["verdict"]["vmcore"]["ok"]
    assert (old["expected"], old["outcome"]) == ("purgatory-refused", "purgatory-refused")
    assert old["evidence"]["corruption"]["segment"]["role"] == "elfcorehdr"
    assert_dump_verified(new)  # the flipped bytes lie past the program headers in use


def test_a_damaged_dump_is_named_not_passed_as_a_capture(on_6_12):
    """elfcorehdr's PT_LOAD for RAM from 1 MiB says p_offset 0: the capture kernel boots and
    /proc/vmcore serves low memory there, which the dump check names."""
    result = on_6_12.results["corrupt-elfcorehdr-pt-load"]
    assert (result["expected"], result["outcome"], result["passed"]) == (
        "dump-mismatch", "dump-mismatch", True)
    assert result["evidence"]["corruption"]["written"] == "00"
    dump = result["evidence"]["verdict"]["dump"]
    assert not dump["ok"] and dump["log"]["problems"] == [] and dump["ranges"]["problems"] == []
    first = dump["problems"][0]  # read from the ELF core headers in guest RAM, then the pages
    assert first.startswith("PT_LOAD 1 (paddr 0x100000-") and "serve it from 0x0" in first
    assert dump["causes"][0] == "pt-load-offset" and result["evidence"]["verdict"]["cause"]["causes"][0] == \
        "pt-load-offset"
    assert result["reason"].startswith("dump-mismatch as expected (pt-load-offset): PT_LOAD 1 (paddr 0x100000-")


def test_garbage_is_rejected_with_enoexec_and_the_guest_stays_healthy(on_6_12):
    result = on_6_12.results["load-garbage"]
    assert result["outcome"] == "load-rejected" and result["expected_errno"] == "ENOEXEC"
    assert result["evidence"]["load"]["errno"] == 8
    assert result["evidence"]["load"]["image"] == "garbage"
    recovery = result["evidence"]["recovery"]
    assert recovery["outcome"] == "capture-booted" and recovery["vmcore"]["ok"]


def test_unload_then_panic_halts_in_the_crashed_kernel(on_6_12):
    result = on_6_12.results["unload-then-panic"]
    assert result["outcome"] == "panic-halted"
    assert result["evidence"]["unload"]["kexec_crash_loaded"] == "0"
    assert "end Kernel panic" in result["evidence"]["verdict"]["console"]


def test_nmi_trigger_reaches_the_capture_kernel(on_6_12):
    result = on_6_12.results["crash-intact-nmi"]
    assert result["outcome"] == "capture-booted" and result["evidence"]["verdict"]["vmcore"]["ok"]
    control = (result["_dir"] / "control.log").read_text()
    assert "> panic nmi" in control


def test_kexec_load_path_is_refused_by_kexec_tools_purgatory(on_6_12):
    result = on_6_12.results["crash-corrupt-kexec-load"]
    assert result["outcome"] == "purgatory-refused"
    load = result["evidence"]["load"]
    assert load["method"] == "kexec_load" and load["rc"] == 0
    roles = {s["role"] for s in load["segments"]["segments"]}
    assert {"purgatory", "kernel", "backup"} <= roles
    assert result["evidence"]["verdict"]["parked"]["segment"]["role"] == "purgatory"


def test_coverage_reports_an_unguarded_purgatory():
    run = labctl("coverage", "--table", "digest", "--method", "kexec_file_load", "--role", "purgatory",
                 "--role", "boot_params", "--placement", "middle", "-j", "2")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "| purgatory |  | **NOT** (capture-booted) |" in run.stdout
    assert "| boot_params |  | refused |" in run.stdout
    written = Path(run.stdout.strip().splitlines()[-1].split("written: ")[1].split(" and ")[0])
    cells = json.loads(written.with_name("coverage.json").read_text())
    assert {(c["role"], c["protected"]) for c in cells} == {("purgatory", False), ("boot_params", True)}
