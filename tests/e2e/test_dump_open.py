"""The dump as users open it, and the CPUs as the dump records them (debian-6.12)."""

from __future__ import annotations

import re

import pytest

from conftest import assert_dump_verified, labctl
from labctl.evidence.smp import stopped_where

pytestmark = pytest.mark.e2e


def test_an_nmi_panic_on_two_cpus_names_the_panicking_cpu_from_the_dump(no_leaks):
    """An NMI panic prints nothing on the console before kexec; the dump's log has the
    panic's `CPU: N` line and the notes say who saved in the crash path and who was stopped."""
    run = labctl("run", "crash-intact-nmi-smp2", "--kernel", "debian-6.12")
    assert run.returncode == 0, run.stdout + run.stderr
    result = run.results["crash-intact-nmi-smp2"]
    verdict = result["evidence"]["verdict"]
    assert verdict["dump"]["ok"] and verdict["dump"]["problems"] == [], verdict["dump"]["problems"]
    dumped, watch = verdict["dump"]["cpus"], verdict["cpus"]
    panic = dumped["log"]["cpu"]
    assert dumped["problems"] == [] and watch["problems"] == []
    assert dumped["crash_path_cpus"] == [panic] == [watch["panic_cpu"]]
    assert watch["panic_cpu_from"].startswith("the dump")
    assert dumped["by_cpu"][str(panic)]["symbol"].startswith("__crash_kexec+")
    assert dumped["by_cpu"][str(panic)]["pid"] == dumped["log"]["pid"]
    other = str(1 - panic)  # saved where the crash NMI found it (an idle guest: its halt)
    assert dumped["by_cpu"][other]["symbol"] and not dumped["by_cpu"][other]["symbol"].startswith("__crash_kexec")
    # the capture kernel runs on the panicking CPU's vCPU; QMP finds the other in the NMI's halt
    assert watch["capture_apicid"] == dict(map(tuple, watch["apicids"]))[panic]
    assert watch["others"][other]["role"].startswith("stopped")
    assert stopped_where(watch["others"][other]["symbol"]), watch["others"][other]


def test_labctl_dump_prints_the_crashed_helper_and_sysrq_handle_crash(no_leaks):
    """--save-vmcore, then `labctl dump DIR` from kallsyms alone (no -dbg download in CI):
    the crashed task is the lab's helper, its stack holds sysrq_handle_crash, and the panic
    message read out of the dump is the console's."""
    run = labctl("run", "crash-intact", "--kernel", "debian-6.12", "--save-vmcore", timeout=1200)
    assert run.returncode == 0, run.stdout + run.stderr
    result = run.results["crash-intact"]
    assert_dump_verified(result)
    seen = result["evidence"]["verdict"]["saved_vmcore"]["drgn"]  # opened by the run itself
    assert seen["opened"] and seen["problems"] == [] and any("sysrq_handle_crash+" in f for f in seen["frames"])
    opened = labctl("dump", str(result["_dir"]), "--no-debug-info")
    assert opened.returncode == 0, opened.stdout + opened.stderr
    out = opened.stdout
    logged = result["evidence"]["verdict"]["dump"]["cpus"]["log"]
    assert f"crashed task: pid {logged['pid']} (kexec-lab-helpe) on CPU {logged['cpu']}" in out, out
    frames = out.split("backtrace (", 1)[1].splitlines()[1:]
    assert frames[0].strip().startswith("#0") and "__crash_kexec+" in frames[0]
    assert any("sysrq_handle_crash+" in frame for frame in frames), out
    console = next(line for line in result["evidence"]["verdict"]["dump"]["log"]["console_lines"]
                   if line.startswith("Kernel panic - not syncing"))
    assert re.search(r"^panic: (.*) \(the dump's log", out, re.M)[1] == console
