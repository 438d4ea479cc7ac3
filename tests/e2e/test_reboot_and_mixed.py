"""kexec reboot and a mixed-version crash end to end: real QEMU, real Debian kernels.

One `labctl run` on debian-6.12 from cold boots: the reboot scenarios by both load methods
(kexec_file_load and `kexec -l`/`kexec -e`), intact and corrupted, and one crash whose
capture kernel is debian-6.1 (about 1.5 min under TCG on an idle host).
"""

from __future__ import annotations

import pytest

from conftest import ROOT, assert_dump_verified, labctl

pytestmark = pytest.mark.e2e

KERNEL = "debian-6.12"
REBOOTS = ("kexec-reboot-intact", "kexec-reboot-corrupt", "kexec-reboot-intact-kexec-load",
           "kexec-reboot-corrupt-kexec-load")
MIXED = "mixed-crash-from-debian-6.1"


@pytest.fixture(scope="module")
def run():
    paths = [str(ROOT / "scenarios" / "kexec-reboot" / f"{name}.yaml") for name in REBOOTS]
    return labctl("run", *paths, str(ROOT / "scenarios" / "mixed" / f"{MIXED}.yaml"),
                  "--kernel", KERNEL, "--fresh", timeout=900)


def test_every_pair_passes(run):
    assert run.returncode == 0, run.stdout + run.stderr
    assert set(run.results) == {*REBOOTS, MIXED}
    assert all(r["passed"] for r in run.results.values())


@pytest.mark.parametrize("name", ["kexec-reboot-intact", "kexec-reboot-intact-kexec-load"])
def test_the_new_kernel_boots_with_this_runs_token(run, name):
    result = run.results[name]
    verdict, token = result["evidence"]["verdict"], result["evidence"]["reboot"]["token"]
    assert result["outcome"] == "rebooted" and len(token) == 16
    assert verdict["hello_has_token"] and verdict["console_has_token"] and verdict["token"] == token
    assert f"labctl_run={token}" in verdict["cmdline"] and verdict["cmdline"].count("labctl_run=") == 1
    assert verdict["helper_role"] == "primary" and verdict["release"] == result["kernel"]["release"]
    assert result["evidence"]["load"]["crash"] is False
    serial = (result["_dir"] / "serial.log").read_text()
    assert serial.count("Linux version") == 2 and "kexec_core: Starting new kernel" in serial
    control = (result["_dir"] / "control.log").read_text()
    assert ("> reboot" if "kexec-load" not in name else "> kexec-tool -e") in control
    tokens = {run.results[n]["evidence"]["reboot"]["token"] for n in REBOOTS}
    assert len(tokens) == len(REBOOTS)  # one per run


@pytest.mark.parametrize("name", ["kexec-reboot-corrupt", "kexec-reboot-corrupt-kexec-load"])
def test_a_corrupted_reboot_kernel_is_refused_by_purgatory(run, name):
    result = run.results[name]
    parked, corruption = result["evidence"]["verdict"]["parked"], result["evidence"]["corruption"]
    assert result["outcome"] == "purgatory-refused" and parked["samples"] >= 2
    assert parked["segment"]["role"] == "purgatory" and parked["code"].startswith(("ebfe", "e9fbffffff"))
    assert corruption["copies"] and all(w["verified"] for w in corruption["writes"])
    assert corruption["reached_destination"], corruption  # the corrupted page was the one kexec copied
    assert "Linux version" not in (result["_dir"] / "serial.log").read_text().split("Starting new kernel")[-1]


def test_a_mixed_version_crash_dump_is_read_by_the_other_kernel(run):
    result = run.results[MIXED]
    verdict = result["evidence"]["verdict"]
    assert result["outcome"] == "capture-booted"
    assert verdict["capture_release"] == verdict["loaded_kernel"]["release"] == \
        result["evidence"]["load"]["kernel_from"]["release"] != result["kernel"]["release"]
    assert verdict["vmcore"]["osrelease"] == result["kernel"]["release"]
    assert_dump_verified(result)
