"""Recipe kernels in verdicts and listings, on transcripts recorded from tiny-6.12-serial.

The instrumented purgatory's COM1 line is extra evidence next to the parked
vCPU; expected failures (lab.yaml expect_fail) are reported as such; the
catalogue lists recipes with their build state and kexec configuration.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from labctl.config.schema import load_lab, load_scenario
from labctl.evidence.verdict import PURGATORY_REPORT, judge, purgatory_report
from labctl.kernel.build import load_recipe, plan_recipe
from labctl.kernel.catalogue import catalogue_table, describe_entry
from labctl.kernel.providers import Kernel
from labctl.pair.runner import known_failure
from labctl.result import Outcome, PairResult

ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "tests" / "data" / "recipes"
SERIAL = RECORDED / "tiny-6.12-serial"


def recorded(scenario: str) -> tuple[dict, str]:
    folder = SERIAL / scenario
    return json.loads((folder / "result.json").read_text()), (folder / "serial.log").read_text()


def console_report(serial_log: str) -> dict:
    return purgatory_report(PURGATORY_REPORT.search(serial_log)[0])


# ------------------------------------------------------------------ COM1 evidence

def test_recorded_corrupt_run_has_purgatory_saying_mismatch_and_a_parked_vcpu():
    result, serial = recorded("crash-corrupt")
    report = console_report(serial)
    assert report == {"line": "purgatory: sha256 digest mismatch, not booting the next kernel",
                      "digest": "mismatch", "boots_next_kernel": False}
    verdict = result["evidence"]["verdict"]
    assert verdict["purgatory_console"]["digest"] == "mismatch" and verdict["parked"]["samples"] >= 2
    refused = Outcome.PURGATORY_REFUSED
    assert judge(refused, refused, verdict) == (True, "purgatory-refused as expected")


def test_recorded_intact_run_has_purgatory_saying_ok():
    result, serial = recorded("crash-intact")
    assert console_report(serial)["boots_next_kernel"] is True
    verdict = result["evidence"]["verdict"]
    assert verdict["purgatory_console"]["digest"] == "ok"
    assert judge(Outcome.CAPTURE_BOOTED, Outcome.CAPTURE_BOOTED, verdict)[0] is True


def test_a_partial_line_is_not_taken_as_a_report():
    """Console reads can end mid-line; only a whole line is evidence."""
    assert PURGATORY_REPORT.search("purgatory: sha256 digest ok, boot") is None
    assert PURGATORY_REPORT.search("purgatory: sha256 digest ok, booting the next kernel\r\n")


def test_com1_report_contradicting_the_vcpu_fails_the_verdict():
    corrupt, _ = recorded("crash-corrupt")
    intact, _ = recorded("crash-intact")
    parked = {**corrupt["evidence"]["verdict"],
              "purgatory_console": intact["evidence"]["verdict"]["purgatory_console"]}
    passed, reason = judge(Outcome.PURGATORY_REFUSED, Outcome.PURGATORY_REFUSED, parked)
    assert not passed and "purgatory said on COM1: 'purgatory: sha256 digest ok" in reason
    booted = {**intact["evidence"]["verdict"],
              "purgatory_console": corrupt["evidence"]["verdict"]["purgatory_console"]}
    passed, reason = judge(Outcome.CAPTURE_BOOTED, Outcome.CAPTURE_BOOTED, booted)
    assert not passed and reason.startswith("capture-booted as expected, but the evidence disagrees")


def test_negative_control_report_says_mismatch_yet_boots():
    report = purgatory_report("purgatory: sha256 digest mismatch, ignored (negative control), "
                              "booting the next kernel")
    assert report["digest"] == "mismatch" and report["boots_next_kernel"] is True


# ------------------------------------------------------------------ expect_fail

def test_expected_failure_is_named_in_the_summary():
    lab = load_lab(ROOT / "lab.yaml")
    corrupt = load_scenario(ROOT / "scenarios" / "crash-corrupt.yaml")
    intact = load_scenario(ROOT / "scenarios" / "crash-intact.yaml")
    control = Kernel("tiny-6.12-no-digest", Path("bzImage"), "6.12.117-lab")
    why = known_failure(lab, control, corrupt)
    assert why and "negative control" in why
    assert known_failure(lab, control, intact) is None
    assert known_failure(lab, Kernel("debian-6.12", Path("b"), "r"), corrupt) is None

    failed = json.loads((RECORDED / "tiny-6.12-no-digest" / "crash-corrupt" / "result.json").read_text())
    assert failed["expected_failure"] == why
    summary = PairResult.from_json(failed).summary
    assert summary == (f"tiny-6.12-no-digest x crash-corrupt: hang (expected purgatory-refused) -> "
                       f"FAIL (expected failure: {why}): expected purgatory-refused, got hang")
    result, _ = recorded("crash-corrupt")
    lucky = {**result, "unexpected_pass": why}
    assert "PASS (UNEXPECTED PASS: listed in expect_fail" in PairResult.from_json(lucky).summary


def test_recorded_negative_control_run_is_convicted_on_its_evidence():
    """Purgatory said mismatch and went on; the vCPU ended in the kernel segment, not parked."""
    folder = RECORDED / "tiny-6.12-no-digest" / "crash-corrupt"
    result = json.loads((folder / "result.json").read_text())
    report = console_report((folder / "serial.log").read_text())
    assert report["digest"] == "mismatch" and report["boots_next_kernel"] is True
    verdict = result["evidence"]["verdict"]
    assert verdict["purgatory_console"] == report
    assert [v["segment"] for v in verdict["vcpus"]] == ["kernel"]
    assert judge(Outcome.PURGATORY_REFUSED, result["outcome"], verdict) == (
        False, "expected purgatory-refused, got hang (purgatory said on COM1: 'purgatory: sha256 "
               "digest mismatch, ignored (negative control), booting the next kernel')")


def test_expect_fail_must_map_scenarios_to_reasons(tmp_path):
    lab = tmp_path / "lab.yaml"
    lab.write_text("default_kernel: k\nkernels:\n  k:\n    path: bz\n    expect_fail:\n"
                   "      crash-corrupt: [not, a, reason]\n")
    from labctl.errors import ConfigError
    with pytest.raises(ConfigError, match=r"lab.yaml:6: key 'kernels.k.expect_fail.crash-corrupt'"):
        load_lab(lab)


# ------------------------------------------------------------------ kernel list

def test_kernel_list_shows_recipe_build_state_and_kexec_config(tmp_path):
    tree = tmp_path / "linux"
    tree.mkdir()
    (tree / "Makefile").write_text("")
    (tree / "Kconfig").write_text("")
    (tmp_path / "tiny.yaml").write_text("source: {path: linux}\n")
    (tmp_path / "lab.yaml").write_text(
        f"cache_dir: {tmp_path / 'cache'}\ndefault_kernel: tiny\nkernels:\n"
        "  tiny: {recipe: tiny.yaml}\n  mine: {path: no/such/bzImage}\n")
    lab = load_lab(tmp_path / "lab.yaml")
    row = describe_entry(lab, lab.kernels["tiny"])
    assert (row.kind, row.cached, row.release, row.symbols) == ("recipe", False, "?", None)

    plan = plan_recipe(load_recipe(tmp_path / "tiny.yaml", "tiny"), lab.cache_dir)
    plan.directory.mkdir(parents=True)  # what a finished build leaves behind
    shutil.copy(RECORDED / "tiny-6.12" / "config", plan.directory / "config")
    (plan.directory / "bzImage").write_bytes(b"")
    (plan.directory / "build.json").write_text(json.dumps({"release": "6.12.117-lab-test"}))
    row = describe_entry(lab, lab.kernels["tiny"])
    assert (row.cached, row.release) == (True, "6.12.117-lab-test")
    assert row.symbols["KEXEC_FILE"] == "y" and row.symbols["CRASH_DUMP"] == "y"
    assert row.symbols["KEXEC_SIG"] == "n" and plan.key in row.note

    table = catalogue_table(lab).splitlines()
    assert table[0].split()[:4] == ["NAME", "KIND", "RELEASE", "CACHED"]
    mine = next(line for line in table if line.startswith("mine "))
    assert mine.split()[1:4] == ["path", "?", "no"]
    assert next(line for line in table if line.startswith("tiny*")).split()[1:4] == \
        ["recipe", "6.12.117-lab-test", "yes"]
