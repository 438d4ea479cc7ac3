"""Where an oops happened, read from its report (evidence/oops.py) on recorded console text:
"inside kexec_file_load" only when the report shows kexec code or the lab's helper."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from recorded import DATA, control_messages

from labctl.config.schema import find_scenario, load_lab, load_scenario
from labctl.evidence.oops import parse_oops
from labctl.guest.accel import AccelChooser
from labctl.kernel.providers import resolve_kernel
from labctl.pair.runner import PairRun
from labctl.pair.steps import PrimaryOops, load_oops_error
from labctl.progress import Progress

ROOT = Path(__file__).resolve().parents[2]

ARM64 = "tiny-6.12-arm64"  # oopses in machine_kexec_post_load() on any reboot (non-crash) load
STAMP = re.compile(r"^\[ *[\d.]+\] ")  # the lab's own time stamp in serial.log


def arm64_kexec_load_oops() -> list[str]:
    """The whole oops report kexec-tools' reply carried (its kexec -l died in the syscall)."""
    reply = next(m for m in control_messages(ARM64, "kexec-reboot-intact-kexec-load") if m["type"] == "kexec-tool")
    return reply["log"]


def x86_trace_after(first_line: str, comm: str | None = None) -> list[str]:
    """A recorded x86 report (debian-6.12's panic: dump_stack's task line, RIP-less frames,
    "? " guesses), after an oops line as 6.12 prints it; `comm` renames its task."""
    serial = (DATA / "debian-6.12" / "crash-intact-identity" / "serial.log").read_text().splitlines()
    lines = [STAMP.sub("", line) for line in serial[2:40]]
    if comm:
        lines = [line.replace("Comm: kexec-lab-helpe", f"Comm: {comm}") for line in lines]
    return [first_line, *lines, "---[ end trace 0000000000000000 ]---"]


def test_the_arm64_oops_in_machine_kexec_post_load_is_kexecs():
    report = parse_oops(["kexec: loading", *arm64_kexec_load_oops()])
    assert report.first_line == "Unable to handle kernel paging request at virtual address ffffffffc0000000"
    assert (report.task, report.pc, report.complete) == ("kexec", "trans_pgd_create_copy", True)
    assert report.frames[:3] == ["trans_pgd_create_copy", "machine_kexec_post_load", "__arm64_sys_kexec_load"]
    assert report.in_kexec() is True
    assert report.where() == ("in trans_pgd_create_copy (task kexec; called from machine_kexec_post_load < "
                              "__arm64_sys_kexec_load < do_el0_svc < el0_svc)")


def test_an_oops_in_the_helper_is_kexecs_and_one_in_another_task_is_not():
    oops = "Oops: Oops: 0000 [#1] PREEMPT SMP NOPTI"  # 6.12 x86's line (a CI run's)
    helper = parse_oops(x86_trace_after(oops))
    assert helper.task == "kexec-lab-helpe" and helper.complete and helper.in_kexec() is True
    assert "? _printk" not in " ".join(helper.frames) and helper.frames[:2] == ["panic", "sysrq_handle_crash"]
    other = parse_oops(x86_trace_after(oops, comm="kworker/0:1"))
    assert other.task == "kworker/0:1" and other.in_kexec() is False
    error = str(load_oops_error(other))
    assert error.startswith("the running kernel oopsed outside kexec_file_load, while it ran, "
                            "at an address the report did not name (task kworker/0:1; called from panic <")
    assert oops in error


def test_a_report_cut_short_says_it_does_not_know_where():
    report = parse_oops(["Oops: Oops: 0000 [#1] PREEMPT SMP NOPTI"])
    assert report.in_kexec() is None and not report.complete
    assert "its report does not say where" in str(load_oops_error(report))
    assert parse_oops(x86_trace_after("sysrq: Trigger a crash")[1:]) is None  # a panic is not an oops


class OopsingOnce(PairRun):
    """A pair whose first guest's primary oopsed in another task while it loaded (the
    report above); the guest part is replaced, what the runner does about it is real."""

    boots = 0

    def _snapshot(self, spec, out, t0):
        return None

    def _guest(self, spec, out, t0, snap):
        self.boots += 1
        if self.boots == 1:
            (out / "serial.log").write_text("the first boot's console\n")
            raise load_oops_error(parse_oops(x86_trace_after("Oops: Oops: 0000 [#1] PREEMPT SMP NOPTI",
                                                             comm="kworker/0:1")))
        return "verdict of the second boot"


def oopsing_pair(tmp_path: Path, **kw) -> OopsingOnce:
    lab = load_lab(ROOT / "lab.yaml")
    return OopsingOnce(lab, resolve_kernel(lab, "debian-6.12"), find_and_load("crash-intact", lab),
                       AccelChooser(tmp_path), Progress(quiet=True), **kw)


def find_and_load(name: str, lab):
    return load_scenario(find_scenario(name, lab.scenarios_dir))


def test_an_oops_outside_kexec_boots_the_primary_again_once_and_keeps_the_attempt(tmp_path):
    pair = oopsing_pair(tmp_path)
    assert pair._attempt(None, tmp_path, 0.0) == "verdict of the second boot" and pair.boots == 2
    [attempt] = pair.attempts
    assert attempt["oops"].startswith("the running kernel oopsed outside kexec_file_load")
    assert attempt["report"]["task"] == "kworker/0:1" and attempt["report"]["in_kexec"] is False
    assert (tmp_path / "oops-attempt-serial.log").read_text() == "the first boot's console\n"
    assert pair.evidence["snapshot"]["fresh_boot"].startswith("fell back to a fresh boot: the running kernel oopsed")


def test_a_second_oops_or_one_in_kexec_is_no_verdict(tmp_path):
    class OopsingAlways(OopsingOnce):
        def _guest(self, spec, out, t0, snap):
            self.boots += 1
            raise load_oops_error(parse_oops(x86_trace_after("Oops: Oops: 0000 [#1] PREEMPT SMP NOPTI", "kworker/0:1")))

    lab = load_lab(ROOT / "lab.yaml")
    always = OopsingAlways(lab, resolve_kernel(lab, "debian-6.12"), find_and_load("crash-intact", lab),
                           AccelChooser(tmp_path), Progress(quiet=True))
    with pytest.raises(PrimaryOops):
        always._attempt(None, tmp_path, 0.0)
    assert always.boots == 2  # once again, not more
    in_kexec = load_oops_error(parse_oops(x86_trace_after("Oops: Oops: 0000 [#1] PREEMPT SMP NOPTI")))
    assert not isinstance(in_kexec, PrimaryOops)  # the helper's own task: no second boot
