"""A kernel oops report read off the console: where the kernel faulted, in which task, and
through which calls, so that the lab says "inside kexec_file_load" only when the report
shows it (the task is the lab's helper, or a frame is kexec code), never because the oops
happened to print while a load was running.

Formats, from the kernel's own source (6.12; 6.1 prints the same without `UID:`):
- lib/dump_stack.c dump_stack_print_info: "CPU: %d UID: %u PID: %d Comm: %.20s ...";
- arch/x86/kernel/dumpstack.c: "RIP: %04x:%pS" (show_ip), "Call Trace:", and each frame
  as "%s %s%pBb" ("? " before an unreliable one): " sym+0x1a/0x40";
- arch/arm64/kernel/process.c "pc : %pS", stacktrace.c "Call trace:" and " %pSb" frames;
- riscv64 (arch/riscv/kernel/process.c): "epc : %pS";
- kernel/panic.c: "---[ end trace %016llx ]---" closes the report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

OOPS_START = re.compile(r"\bOops: |Unable to handle kernel|general protection fault")
REPORT_END = re.compile(r"---\[ end trace [0-9a-f]+ \]---|Kernel panic - not syncing")
TASK = re.compile(r"\bCPU: \d+ (?:UID: \d+ )?PID: \d+ Comm: (\S+)")
PC = re.compile(r"(?:\bRIP: [0-9a-f]{4}:|\bpc : |\bepc : )([A-Za-z_][\w.]*)\+0x[0-9a-f]+")
FRAME = re.compile(r"(?:^|\s)(\? )?([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+")
REGISTER_LINE = re.compile(r"\b(?:lr|ra) : ")  # arm64's and riscv64's return address: not a frame
HELPER_TASK = "kexec-lab-helper"[:15]  # TASK_COMM_LEN - 1 characters of the helper's name
MAX_LINES = 200  # an oops report is a few dozen lines; the rest is not this report


@dataclass
class OopsReport:
    """What one oops report on the console says, as far as it was read."""

    first_line: str
    task: str | None = None
    pc: str | None = None  # the function the faulting instruction is in
    frames: list[str] = field(default_factory=list)  # reliable call-trace frames, innermost first
    complete: bool = False  # the end-of-report line was read

    def in_kexec(self) -> bool | None:
        """True when the report shows kexec code or the lab's helper faulting, False when it
        names another task and no kexec frame, None when it says neither (cut short)."""
        names = [self.pc or "", *self.frames]
        if self.task == HELPER_TASK or any("kexec" in name for name in names):
            return True
        if self.task is None and not self.frames:
            return None
        return False

    def where(self) -> str:
        """'in FUNCTION (task T; called from A < B < C)', from what the report gave."""
        parts = [f"task {self.task}"] if self.task else []
        callers = [f for f in self.frames if f != self.pc][:4]
        if callers:
            parts.append("called from " + " < ".join(callers))
        place = f"in {self.pc}" if self.pc else "at an address the report did not name"
        return f"{place} ({'; '.join(parts)})" if parts else place

    def to_json(self) -> dict:
        return {"first_line": self.first_line, "task": self.task, "pc": self.pc,
                "frames": self.frames, "complete": self.complete, "in_kexec": self.in_kexec()}


def parse_oops(lines: list[str]) -> OopsReport | None:
    """The first oops report in `lines` (console lines, bounded by MAX_LINES), or None."""
    start = next((i for i, line in enumerate(lines) if OOPS_START.search(line)), None)
    if start is None:
        return None
    report = OopsReport(first_line=lines[start].strip())
    for line in lines[start + 1:start + MAX_LINES]:
        if REPORT_END.search(line):
            report.complete = True
            break
        if report.task is None and (task := TASK.search(line)):
            report.task = task[1]
        elif report.pc is None and (pc := PC.search(line)):
            report.pc = pc[1]
        elif not PC.search(line) and not REGISTER_LINE.search(line) and (frame := FRAME.search(line)) \
                and not frame[1]:  # "? sym": an unreliable guess of the unwinder, not a caller
            report.frames.append(frame[2])
    return report
