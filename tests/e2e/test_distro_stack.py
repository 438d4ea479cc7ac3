"""userland: debian end to end: Debian 12's own kdump-tools on the catalogue kernel.

Each guest run is a systemd boot, then a capture boot into kdump-tools-dump.service and a
dump of a 1 GiB guest under TCG, or a refusal.  CI (make test) runs two: distro-kdump and
distro-kdump-corrupt on debian-6.12 with kdump-tools' default kexec_load, 125 s and 45 s
here at load 7-10 (239 s and 168 s at load 20), on the root disk make setup built; the
kexec_file_load pair (and debian-6.1's root disk, built on first use) is marked full
(make test-full).  The failed-build test needs no guest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import labctl
from labctl.errors import InfraError
from labctl.guest import rootfs

pytestmark = pytest.mark.e2e


def cached_image(result: dict) -> Path:
    """The cached root disk a run booted."""
    return Path(result["evidence"]["rootfs"]["directory"]) / rootfs.DISK


@pytest.mark.parametrize("scenario, call", [
    ("distro-kdump", "kexec_load"),
    pytest.param("distro-kdump-file", "kexec_file_load", marks=pytest.mark.full)])
def test_distro_kdump_saves_a_dump_that_is_the_crashed_kernels_memory(no_leaks, scenario, call):
    run = labctl("run", scenario, "--kernel", "debian-6.12", timeout=1800)
    result = run.results[scenario]
    assert run.returncode == 0, run.stdout + run.stderr
    assert (result["expected"], result["outcome"]) == ("capture-booted", "capture-booted")
    load = result["evidence"]["load"]
    assert load["by"] == "kdump-tools" and load["kexec_crash_loaded"] == 1 and load["unit"] == "active"
    assert load["kexec_call_by_command"] == load["kexec_call_by_log"] == call
    if call == "kexec_load":  # 6.12 prints kexec_file_load's table only under KEXEC_FILE_DEBUG
        assert {"kernel", "purgatory", "initrd"} <= {s["role"] for s in load["segments"]["segments"]}
    dump = result["evidence"]["verdict"]["dump"]
    assert dump["problems"] == [] and dump["pages"]["differ"] == 0 and dump["pages"]["compared"] > 10000
    assert dump["log"]["found"] and dump["release"]["utsname_release"] == result["kernel"]["release"]
    # drgn opens it as a user would (no -dbg in CI): the crashed task from its crash-path notes
    drgn = dump["drgn"]
    assert drgn["opened"] and drgn["problems"] == [], drgn
    assert drgn["task"].startswith(f"pid {dump['log']['crashed_task']['pid']} ")
    assert any("sysrq_handle_crash" in frame for frame in drgn["frames"]), drgn["frames"]
    stamp = result["evidence"]["verdict"]["var_crash"]["dump_dirs"][0]
    dmesg = (result["_dir"] / "var-crash" / stamp / f"dmesg.{stamp}").read_text()
    assert "Kernel panic - not syncing: sysrq triggered crash" in dmesg
    timings = result["timings"]
    assert timings["panic_to_capture_started"] < timings["panic_to_vmcore_saved"] < timings["panic_to_reboot"]
    capture_votes = assert_capture_identified(result)
    assert "console-cmdline" in capture_votes
    image = cached_image(result)
    assert image.stat().st_mtime < os.path.getmtime(result["_dir"] / "result.json") - timings["total"]


def assert_capture_identified(result: dict) -> set[str]:
    """The capture boot is claimed on two signals with none against, and only the capture
    kernel's command line carried this run's token: the signals that said so."""
    load, identity = result["evidence"]["load"], result["evidence"]["verdict"]["identity"]
    token = load["capture_token"]  # on the command line kdump-config gave the capture kernel
    assert len(token) == 16 and f"labctl_run={token}" in load["kexec_cmd"]
    assert "disagreement" not in identity, identity
    votes = {v["signal"] for v in identity["votes"] if v["says"] == "capture"}
    assert len(votes) >= 2 and "panic-unended" in votes
    return votes


def test_a_silent_capture_kernel_is_still_seen_by_its_own_log_in_ram(no_leaks):
    """`quiet` reaches the capture kernel through kdump-tools' KDUMP_CMDLINE (its
    /proc/cmdline): no banner and no command line on the console, yet the lab must see it run
    (its log in the reservation, where the vCPUs run) and check the dump it saved."""
    run = labctl("run", "distro-kdump-quiet", "--kernel", "debian-6.12", timeout=1800)
    result = run.results["distro-kdump-quiet"]
    assert run.returncode == 0, run.stdout + run.stderr
    assert (result["expected"], result["outcome"]) == ("capture-booted", "capture-booted")
    assert "capture_banner" not in result["evidence"]["verdict"]["console_marks"]
    assert "console-cmdline" not in assert_capture_identified(result)
    assert {"ram-cmdline", "pc"} <= assert_capture_identified(result)
    dump = result["evidence"]["verdict"]["dump"]
    assert dump["problems"] == [] and dump["pages"]["differ"] == 0 and dump["pages"]["compared"] > 10000


@pytest.mark.parametrize("scenario, call, kernel", [
    ("distro-kdump-corrupt", "kexec_load", "debian-6.12"),
    pytest.param("distro-kdump-file-corrupt", "kexec_file_load", "debian-6.1", marks=pytest.mark.full)])
def test_distro_kdump_corrupted_after_load_is_refused_and_saves_nothing(no_leaks, scenario, call, kernel):
    """kexec_file_load on debian-6.1: 6.12 prints its segment table only under KEXEC_FILE_DEBUG,
    which Debian 12's kexec-tools does not pass (a configuration-class result there)."""
    run = labctl("run", scenario, "--kernel", kernel, timeout=1800)
    result = run.results[scenario]
    assert run.returncode == 0, run.stdout + run.stderr
    assert (result["expected"], result["outcome"]) == ("purgatory-refused", "purgatory-refused")
    verdict = result["evidence"]["verdict"]
    assert verdict["parked"]["segment"]["role"] == "purgatory"
    assert verdict["var_crash"]["dump_dirs"] == []
    corruption = result["evidence"]["corruption"]
    assert corruption["segment"]["role"] == "kernel" and corruption["before"] != corruption["written"]
    assert result["evidence"]["load"]["kexec_call_by_log"] == call


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mmdebstrap"), reason="needs root and mmdebstrap")
def test_a_failed_rootfs_build_names_its_step_and_leaves_nothing(tmp_path, monkeypatch):
    """A suite the archive does not have: mmdebstrap fails, the error names the step, and
    neither the image nor its temporary directory is left in the cache."""
    kernel = labctl("kernel", "fetch", "debian-6.12")
    assert kernel.returncode == 0, kernel.stdout + kernel.stderr
    from labctl.config.schema import load_lab
    from labctl.kernel.providers import resolve_kernel
    lab = load_lab(rootfs.GUEST_FILES.parents[1] / "lab.yaml")
    debian = resolve_kernel(lab, "debian-6.12")
    monkeypatch.setattr(rootfs, "SUITE", "no-such-suite-kexec-lab")
    final = tmp_path / "rootfs" / "image"
    with pytest.raises(InfraError) as err:
        rootfs.build(final, debian, rootfs.kernel_tree(debian), {}, progress=lambda _: None)
    assert "rootfs build failed at step 'mmdebstrap'" in str(err.value)
    assert list((tmp_path / "rootfs").iterdir()) == []
