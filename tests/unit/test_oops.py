"""Where an oops happened, read from its report (evidence/oops.py) on recorded console text:
"inside kexec_file_load" only when the report shows kexec code or the lab's helper."""

from __future__ import annotations

import re

from recorded import DATA, control_messages

from labctl.evidence.oops import parse_oops
from labctl.pair.steps import load_oops_error

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
