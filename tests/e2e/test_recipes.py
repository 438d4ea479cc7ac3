"""Recipe kernels end to end: built from Debian's linux-source-6.12 with real patches,
booted under QEMU, judged like any other kernel.

The from-scratch build (tinyconfig + the lab's fragment) goes into an empty cache of its
own, with the shared compiler cache linked in as a user's machine has it: tiny-6.12 is
tiny-6.12-serial without its purgatory patch, so after `make recipes` most objects come
from ccache and the build takes about a minute instead of a cold compile's five (unpack,
configure, make, link and publish all run as from nothing).  The other tests use the
shared cache, where `make recipes` (or their first use) built them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import ROOT, assert_dump_verified, labctl, shared_cache

pytestmark = pytest.mark.e2e

BUILD_TIMEOUT = 1800
SCENARIOS = [str(ROOT / "scenarios" / f"{s}.yaml") for s in ("crash-corrupt", "crash-intact")]


@pytest.fixture(scope="module")
def serial_run():
    return labctl("run", "crash-corrupt", "crash-intact", "--kernel", "tiny-6.12-serial",
                  timeout=BUILD_TIMEOUT)


@pytest.fixture(scope="module")
def control_run():
    return labctl("run", "crash-corrupt", "crash-intact", "corrupt-initrd", "--kernel", "tiny-6.12-no-digest",
                  timeout=BUILD_TIMEOUT)


def test_from_scratch_build_then_cache_hit_then_both_scenarios_pass(tmp_path, no_leaks):
    shared_ccache = shared_cache() / "ccache"
    shared_ccache.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "ccache").symlink_to(shared_ccache)
    lab = tmp_path / "lab.yaml"
    lab.write_text(f"cache_dir: {tmp_path / 'cache'}\nartifacts_dir: {tmp_path / 'artifacts'}\n"
                   f"default_kernel: tiny\nkernels:\n"
                   f"  tiny: {{recipe: {ROOT / 'guests' / 'kernels' / 'tiny-6.12.yaml'}}}\n")
    start = time.monotonic()
    built = labctl("--lab", str(lab), "kernel", "build", "tiny", timeout=BUILD_TIMEOUT)
    from_scratch = time.monotonic() - start
    assert built.returncode == 0, built.stdout + built.stderr
    assert "(built, key " in built.stdout and "unpacking" in built.stderr
    assert "building: " in built.stderr  # progress: stage, step count, last line
    bzimage = Path(built.stdout.rsplit(" -> ", 1)[1].strip())
    outputs = sorted(p.name for p in bzimage.parent.iterdir())
    assert outputs == ["System.map", "build.json", "build.log", "bzImage", "config",
                       "purgatory.ro", "vmlinux"]
    meta = json.loads((bzimage.parent / "build.json").read_text())
    assert meta["release"].startswith("6.12.") and meta["release"].endswith(f"-lab-{meta['key'][:8]}")
    assert [p.name for p in (tmp_path / "artifacts" / "kernel-builds").iterdir()][0].startswith(
        f"build-tiny-{meta['key']}")
    assert not list((tmp_path / "cache" / "kernel-builds").glob(".work-*"))

    start = time.monotonic()
    again = labctl("--lab", str(lab), "kernel", "build", "tiny")
    cache_hit = time.monotonic() - start
    assert again.returncode == 0 and "(cache hit, key " in again.stdout and "building" not in again.stderr
    assert cache_hit < 20 < from_scratch, (cache_hit, from_scratch)
    print(f"tiny-6.12 from scratch {from_scratch:.0f} s (build.json: {meta['seconds']} s), "
          f"cache hit {cache_hit:.1f} s")

    listed = labctl("--lab", str(lab), "kernel", "list")
    row = next(line for line in listed.stdout.splitlines() if line.startswith("tiny*")).split()
    assert row[1:9] == ["recipe", meta["release"], "yes", "y", "y", "y", "n", "n"], row

    run = labctl("--lab", str(lab), "run", *SCENARIOS)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.results["crash-corrupt"]["outcome"] == "purgatory-refused"
    assert run.results["crash-intact"]["evidence"]["verdict"]["vmcore"]["osrelease"] == meta["release"]
    assert "purgatory_console" not in run.results["crash-corrupt"]["evidence"]["verdict"]  # unpatched


def test_instrumented_purgatory_reports_on_com1_and_the_vcpu_evidence_stays(serial_run):
    assert serial_run.returncode == 0, serial_run.stdout + serial_run.stderr
    corrupt, intact = serial_run.results["crash-corrupt"], serial_run.results["crash-intact"]
    assert [p["name"][:5] for p in corrupt["kernel"]["recipe"]["patches"]] == ["0001-"]
    verdict = corrupt["evidence"]["verdict"]
    assert verdict["purgatory_console"] == {
        "line": "purgatory: sha256 digest mismatch, not booting the next kernel",
        "digest": "mismatch", "boots_next_kernel": False}
    assert verdict["parked"]["segment"]["role"] == "purgatory" and verdict["parked"]["samples"] >= 2
    assert 0 < corrupt["timings"]["panic_to_purgatory_report"] <= corrupt["timings"]["panic_to_verdict"]
    assert intact["outcome"] == "capture-booted" and intact["passed"]
    assert intact["evidence"]["verdict"]["purgatory_console"]["digest"] == "ok"
    assert_dump_verified(intact)
    assert "purgatory: sha256 digest ok" in (intact["_dir"] / "serial.log").read_text()


def test_negative_control_purgatory_is_convicted_as_an_expected_failure(control_run):
    """The lab's self-test: a purgatory that ignores the digest must make crash-corrupt FAIL."""
    run = control_run
    assert run.returncode == 1, run.stdout + run.stderr
    corrupt, intact = run.results["crash-corrupt"], run.results["crash-intact"]
    assert corrupt["outcome"] == "capture-halted" and corrupt["passed"] is False
    halted = corrupt["evidence"]["verdict"]["halted"]  # judged on evidence, not at the deadline
    assert halted["segment"] == "kernel" and halted["how"] in ("hlt with interrupts off", "jump-to-self")
    assert corrupt["timings"]["panic_to_verdict"] < 30
    initrd = run.results["corrupt-initrd"]  # a corrupted initramfs entered: init names the file
    assert initrd["outcome"] == "capture-damaged" and "expected_failure" in initrd
    assert initrd["evidence"]["verdict"]["console"].startswith("kexec-lab: initramfs damaged: /")
    assert ": FAILED" in initrd["evidence"]["verdict"]["console"]
    assert "negative control" in corrupt["expected_failure"]
    assert "tiny-6.12-no-digest x crash-corrupt: " in run.stdout
    assert "-> FAIL (expected failure: negative control" in run.stdout
    report = corrupt["evidence"]["verdict"]["purgatory_console"]
    assert report["digest"] == "mismatch" and report["boots_next_kernel"] is True
    assert corrupt["reason"].endswith(f"(purgatory said on COM1: {report['line']!r})")
    assert corrupt["evidence"]["corruption"]["verified"]
    # the same kernel is otherwise healthy: the failure is the digest, not the build
    assert intact["outcome"] == "capture-booted" and intact["passed"] and "expected_failure" not in intact


def test_a_patch_that_does_not_apply_is_a_clear_error(tmp_path):
    stale = tmp_path / "0001-stale.patch"
    patch = (ROOT / "guests/kernels/patches/0001-x86-purgatory-report-the-digest-result-on-COM1.patch")
    stale.write_text(patch.read_text().replace("	ret = verify_sha256_digest();",
                                               "	ret = verify_sha512_digest();"))
    (tmp_path / "stale.yaml").write_text(
        f"source: {{debian_package: linux-source-6.12}}\npatches: [{stale}]\n"
        f"config: {{fragments: [{ROOT / 'guests/kernels/kexec-lab.config'}]}}\n")
    (tmp_path / "lab.yaml").write_text(f"artifacts_dir: {tmp_path / 'artifacts'}\ndefault_kernel: stale\n"
                                       f"kernels:\n  stale: {{recipe: stale.yaml}}\n")
    run = labctl("--lab", str(tmp_path / "lab.yaml"), "run", SCENARIOS[0], timeout=BUILD_TIMEOUT)
    assert run.returncode == 2, run.stdout + run.stderr
    assert ("patch 0001-stale.patch does not apply: arch/x86/purgatory/purgatory.c: hunk #2 "
            "@@ -47,10 +89,12 @@ void purgatory(void) FAILED at line 89") in run.stderr, run.stderr
    assert "booting" not in run.stderr
    assert list((tmp_path / "artifacts" / "kernel-builds").glob("build-stale-*.log"))
