"""Failure outcomes name their cause (evidence/causes.py, config `cause:`), on recorded runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from recorded import DATA, message, result

from labctl.config.cause_names import CAUSES
from labctl.config.schema import load_lab, load_scenario
from labctl.errors import ConfigError
from labctl.evidence.causes import cause_problem, classify
from labctl.evidence.verdict import judge
from labctl.report.render import FAIL, XFAIL
from labctl.report.render import classify as status

NO_DIGEST = DATA / "recipes" / "tiny-6.12-no-digest"
SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def verdict(path: Path) -> tuple[str, dict]:
    recorded = json.loads((path / "result.json").read_text())
    return recorded["outcome"], recorded["evidence"]["verdict"]


def test_a_pt_load_offset_is_named_from_the_pages_the_dump_serves():
    outcome, evidence = verdict(DATA / "debian-6.12" / "corrupt-elfcorehdr-pt-load")
    assert classify(outcome, evidence) == {"causes": ["pt-load-offset"]}


@pytest.mark.parametrize("run", ["crash-intact", "crash-intact-identity"])
def test_opensbi_memory_is_named_on_riscv64_only(run):
    outcome, evidence = verdict(DATA / "tiny-6.12-riscv64" / run)
    assert classify(outcome, evidence, arch="riscv64") == {"causes": ["opensbi-region"]}
    assert classify(outcome, evidence, arch="x86_64") == {"causes": ["page-unreadable"]}


def test_a_missing_symbol_is_what_kexec_tools_said_at_the_load():
    """arm64 kexec_load, recorded: Debian's kexec-tools finds no _text, and the dump's log
    then cannot be read; without kexec-tools' words it is only a dump-log problem."""
    run = "crash-intact-kexec-load-identity"
    outcome, evidence = verdict(DATA / "tiny-6.12-arm64" / run)
    output = message("tiny-6.12-arm64", run, "kexec-tool")["output"]
    assert "Cannot get kernel _text symbol address" in output
    assert classify(outcome, evidence, output, "arm64") == {"causes": ["missing-symbol"]}
    assert classify(outcome, evidence, [], "arm64") == {"causes": ["dump-log"]}
    assert evidence["cause"] == {"causes": ["missing-symbol"]}


def test_the_labs_own_timeout_is_never_a_cause():
    evidence = {"dump": {"problems": ["the capture helper did not answer vmcore-pages within 30 s "
                                      "(reading /proc/vmcore hung?)"]}}
    evidence["cause"] = classify("dump-mismatch", evidence)
    assert evidence["cause"] == {"causes": ["lab-timeout"]}
    passed, reason = judge("dump-mismatch", "dump-mismatch", evidence, expected_cause="pt-load-offset")
    assert not passed and "lab's own reply timed out" in reason


@pytest.mark.parametrize("run, outcome, cause", [
    ("crash-corrupt-identity", "capture-halted", "hlt-in-kernel"),
    ("crash-corrupt-halted", "capture-halted", "hlt-in-kernel"),
    ("corrupt-initrd-damaged", "capture-damaged", "initramfs-checksum"),
    ("corrupt-initrd-identity", "capture-damaged", "initramfs-checksum"),
])
def test_recorded_negative_control_failures_have_their_cause(run, outcome, cause):
    seen, evidence = verdict(NO_DIGEST / run)
    assert seen == outcome and classify(seen, evidence) == {"causes": [cause]}


def test_capture_panics_are_named_from_their_message():
    recorded = result("debian-6.12", "capture-quiet-panic")
    assert recorded["evidence"]["verdict"]["cause"] == {"causes": ["no-root-fs"]}
    said = {"---[ end Kernel panic - not syncing: No working init found.  Try passing init= ]---": "no-init",
            "---[ end Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100 ]---": "init-exited",
            "---[ end Kernel panic - not syncing: Fatal exception ]---": "oops",
            "---[ end Kernel panic - not syncing: something new ]---": "other"}
    for line, cause in said.items():
        assert classify("capture-panicked", {"console": line}) == {"causes": [cause]}


def test_a_different_cause_fails():
    outcome, evidence = verdict(DATA / "debian-6.12" / "corrupt-elfcorehdr-pt-load")
    evidence = {**evidence, "cause": classify(outcome, evidence)}
    assert judge("dump-mismatch", outcome, evidence, expected_cause="pt-load-offset")[0]
    passed, reason = judge("dump-mismatch", outcome, evidence, expected_cause="dump-log")
    assert not passed and reason == "dump-mismatch as expected, but the cause is pt-load-offset, not dump-log"
    assert cause_problem(None, evidence) is None
    assert cause_problem("pt-load-offset", {}) == "the cause is not known, not pt-load-offset"


def test_scenarios_expecting_a_failure_name_a_cause_of_it():
    named = {}
    for path in sorted(SCENARIOS.glob("*.yaml")):
        expect = load_scenario(path).expect
        for entry in (expect, *expect.cases):
            if entry.outcome in CAUSES:
                assert entry.cause in CAUSES[entry.outcome], path
                named[path.stem] = entry.cause
    assert named == {"capture-quiet-panic": "no-root-fs", "corrupt-elfcorehdr-pt-load": "pt-load-offset",
                     "crash-intact": "opensbi-region", "crash-intact-kexec-load": "missing-symbol",
                     "memory-hotplug-capture-acpi": "page-unreadable", "corrupt-purgatory": "opensbi-region",
                     "crash-intact-init-exit": "opensbi-region", "lockdown-own-vmlinuz": "opensbi-region",
                     "corrupt-kernel-entry": "fault-loop"}


@pytest.mark.parametrize("expect, line, message", [
    ("expect: {outcome: capture-panicked}\n", 1,
     "key 'expect.cause': is required: capture-panicked names the cause"),
    ("expect:\n  outcome: capture-booted\n  cause: no-root-fs\n", 3,
     "key 'expect.cause': only a failure outcome"),
    ("expect:\n  outcome: dump-mismatch\n  cause: no-root-fs\n", 3,
     "key 'expect.cause': 'no-root-fs' is not a cause of dump-mismatch"),
    ("expect:\n  outcome: capture-booted\n  when:\n    - arch: arm64\n      outcome: capture-halted\n"
     "      reason: r\n", 4, "key 'expect.when.0.cause': is required"),
    ("expect:\n  outcome: dump-mismatch\n  cause: lab-timeout\n", 3,
     "key 'expect.cause': 'lab-timeout' is not one of"),
])
def test_cause_errors_name_file_line_and_key(tmp_path, expect, line, message):
    path = tmp_path / "s.yaml"
    path.write_text(expect)
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(f"{path}:{line}: {message}"), str(caught.value)


LAB = """default_kernel: k
kernels:
  k:
    path: /nowhere/bzImage
    expect_fail:
      crash-corrupt: {expect_fail}
"""


def test_expect_fail_names_the_outcomes_it_must_see(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text(LAB.format(expect_fail="{reason: known bug, outcomes: [capture-halted]}"))
    entry = load_lab(path).kernels["k"]
    assert entry.expect_fail == {"crash-corrupt": "known bug"}
    assert entry.expect_fail_outcomes == {"crash-corrupt": ("capture-halted",)}
    for bad, where, said in [
            ('"known bug"', 6, "key 'kernels.k.expect_fail.crash-corrupt': must be a mapping"),
            ("{reason: r, outcomes: []}", 6, "key 'kernels.k.expect_fail.crash-corrupt.outcomes': names no outcome"),
            ("{reason: r, outcomes: [halted]}", 6, "key 'kernels.k.expect_fail.crash-corrupt.outcomes.0': "
                                                   "'halted' is not one of")]:
        path.write_text(LAB.format(expect_fail=bad))
        with pytest.raises(ConfigError) as caught:
            load_lab(path)
        assert str(caught.value).startswith(f"{path}:{where}: {said}"), str(caught.value)


def test_a_failure_that_is_not_the_named_one_is_a_plain_fail():
    failing = {"outcome": "capture-booted", "passed": False, "matrix": {"expect_fail": "known bug"}}
    assert status(failing) == XFAIL
    assert status({**failing, "unexpected_failure": "expect_fail names capture-halted"}) == FAIL


def test_expect_fail_accepts_only_the_failures_it_names():
    from labctl.pair.runner import failure_note

    named = ("capture-halted",)
    assert failure_note("bug", named, False, "capture-halted") == ("expected_failure", "bug")
    assert failure_note("bug", named, True, "purgatory-refused") == ("unexpected_pass", "bug")
    assert failure_note("bug", named, False, "hang") == ("unexpected_failure",
                                                        "expect_fail names capture-halted, not hang")
