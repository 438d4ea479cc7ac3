"""Applicability end to end: a pair whose kernel lacks what the scenario needs is skipped
before any guest, a selection given twice runs once, and a kernel whose config file claims
what the running kernel does not have fails (it is never skipped)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, labctl

pytestmark = pytest.mark.e2e

KERNEL = "tiny-6.12-serial"  # tinyconfig: no SMP, no memory hotplug
BUILD_TIMEOUT = 1800  # a first use builds the recipe
FETCHED = re.compile(r"-> (\S+)$", re.MULTILINE)


def test_a_kernel_without_smp_skips_the_smp_scenario_and_a_repeated_name_runs_once(tmp_path, no_leaks):
    run = labctl("matrix", "--kernels", KERNEL, "--scenarios", "crash-intact", "crash-intact-cpu1",
                 "crash-intact", "--run-id", "skips", "--artifacts", str(tmp_path), timeout=BUILD_TIMEOUT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 pairs in" in run.stdout and "1 pass, 0 fail, 0 error, 0 xfail, 0 xpass, 1 skip" in run.stdout
    assert run.stderr.count(f"start {KERNEL}/crash-intact;") == 1  # given twice, run once
    assert f"start {KERNEL}/crash-intact-cpu1" not in run.stderr  # no child process for the skip
    skipped = tmp_path / "skips" / KERNEL / "crash-intact-cpu1"
    result = json.loads((skipped / "result.json").read_text())
    assert result["outcome"] == "skipped" and result["passed"] is None
    assert result["reason"].startswith("does not apply: machine.smp: needs 2 CPUs (CONFIG_SMP=y), but "
                                       "CONFIG_SMP is not set (config file ")
    assert {"key": "machine.smp", "state": "unmet"}.items() <= result["evidence"]["requirements"][1].items()
    # no QEMU was started for it: nothing but its result, no console, QEMU or child log
    assert sorted(p.name for p in skipped.iterdir()) == ["result.json"]
    summary = (tmp_path / "skips" / "summary.md").read_text()
    assert f"| {KERNEL} | 1 | 0 | 0 | 0 | 0 | 1 |" in summary
    assert f"**{KERNEL} x crash-intact-cpu1**: SKIP: does not apply: machine.smp" in summary
    junit = (tmp_path / "skips" / "junit.xml").read_text()
    assert 'type="not-applicable" message="does not apply: machine.smp' in junit
    assert json.loads((tmp_path / "skips" / "matrix.json").read_text())["pairs"] == [
        f"{KERNEL}/crash-intact", f"{KERNEL}/crash-intact-cpu1"]


def test_a_config_file_that_claims_smp_the_kernel_lacks_fails(tmp_path, no_leaks):
    """The kernel's config file says CONFIG_SMP=y (edited from the real one); the booted
    kernel brings up one CPU of two: the requirement was met on paper, so the run FAILs
    with both facts, never a skip."""
    fetched = labctl("kernel", "fetch", KERNEL, timeout=BUILD_TIMEOUT)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    bzimage = Path(FETCHED.search(fetched.stdout)[1])
    liar = tmp_path / "liar"
    liar.mkdir()
    shutil.copy(bzimage, liar / "bzImage")
    config = (bzimage.parent / "config").read_text()
    assert "# CONFIG_SMP is not set" in config
    (liar / "config").write_text(config.replace("# CONFIG_SMP is not set", "CONFIG_SMP=y"))
    data = yaml.safe_load((ROOT / "lab.yaml").read_text())
    data["kernels"] = {"liar": {"path": "liar/bzImage"}}
    data["default_kernel"] = "liar"
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump(data))
    run = labctl("--lab", str(tmp_path / "lab.yaml"), "run", str(ROOT / "scenarios/crash-intact-cpu1.yaml"),
                 "--kernel", "liar", "--artifacts", str(tmp_path / "artifacts"), "--fresh", timeout=600)
    assert run.returncode == 1, run.stdout + run.stderr
    result = run.results["crash-intact-cpu1"]
    assert result["outcome"] == "requirement-unmet" and result["passed"] is False
    assert "machine.smp: needs 2 CPUs (CONFIG_SMP=y)" in result["reason"]
    assert "brought up only CPU(s) '0' of the 2 QEMU offered" in result["reason"]
    assert f"though the kernel's config file said CONFIG_SMP=y (config file {liar / 'config'})" in result["reason"]
    assert result["evidence"]["primary"]["release"] == result["kernel"]["release"]  # it did boot
    assert [(r["key"], r["state"]) for r in result["evidence"]["requirements"]] == [
        ("load.method", "met"), ("machine.smp", "unmet")]
    assert "FAIL" in run.stdout
