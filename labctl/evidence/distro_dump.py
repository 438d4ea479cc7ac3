"""kdump-tools' saved dump checked against the truth, as the lab checks its own dumps.

The crashed kernel's memory is frozen from the capture kernel's first line on (it runs
in the crashkernel reservation), so the host hashes every page of the crashed kernel's
System RAM above 1 MiB outside the reservation (dump_check.expected_ranges, CRC-32
per page) from the RAM file at that moment.  After the capture boot saved the dump and the guest rebooted,
every page the dump holds (makedumpfile -d 31 keeps the kernel's own pages: no zero,
cache, user or free pages) must hash the same; the dump must name the crashed kernel's
release; and kdump-tools' dmesg file (makedumpfile --dump-dmesg, from VMCOREINFO) must
hold the panic line the serial console showed.
"""

from __future__ import annotations

import re
import zlib

from labctl.evidence.dump_check import DMESG_TIMESTAMP, LOW_MEMORY_END, PAGE, expected_ranges
from labctl.evidence.kdump_file import KdumpFile, KdumpFormatError
from labctl.guest.memory import GuestMemory

IOMEM_LINE = re.compile(r"^\s*([0-9a-f]+)-([0-9a-f]+) : (System RAM|Crash kernel)\s*$")
CHUNK = 2 << 20
MAX_LISTED = 5


def parse_iomem(lines: list[str]) -> dict:
    """/proc/iomem lines -> {"system_ram": [[start, end], ...], "crashkernel": [start, end]}."""
    ram, crash = [], None
    for line in lines:
        if m := IOMEM_LINE.match(line):
            span = [int(m[1], 16), int(m[2], 16)]
            if m[3] == "System RAM":
                ram.append(span)
            else:
                crash = span
    return {"system_ram": ram, "crashkernel": crash}


# kernel/kexec_file.c and arch/x86/kernel/kexec-bzimage64.c (pr_fmt "kexec_file: ",
# "kexec-bzImage64: "): code only kexec_file_load runs (its image probe, signature check)
# The lab's report unit writes 'c' to /proc/sysrq-trigger: its script's name, cut to
# TASK_COMM_LEN - 1 (15) characters, is the crashing task's comm.
CRASHING_COMM = "kexec-lab-report"[:15]
TASK_LINE = re.compile(r"\bCPU: (\d+) (?:UID: \d+ )?PID: (\d+) Comm: (\S+)")
KEXEC_FILE_LOG = re.compile(r"\b(kexec_file|kexec-bzImage64): ")
KEXEC_TOOL_ENTRY = re.compile(r"kexec_load: entry = ")
DASH_S = re.compile(r"(^|\s)(-s|--kexec-file-syscall)(\s|$)")


def kexec_call(command: str, tool_lines: list[str], kernel_lines: list[str]) -> dict:
    """Which syscall kdump-tools' kexec used, from two independent sources: the command
    kdump-config recorded (`-s`: kexec_file_load, kexec-tools' kexec/kexec.c), and who
    printed the segment table: kexec-tools itself (`kexec_load: entry = ...`, its own
    kexec_load path) or the kernel's kexec_file code (its lines, only ever from
    kexec_file_load: e.g. "kexec-bzImage64: It's a relocatable bzImage64")."""
    by_command = "kexec_file_load" if DASH_S.search(command) else "kexec_load"
    if any(KEXEC_TOOL_ENTRY.search(line) for line in tool_lines):
        by_log: str | None = "kexec_load"
    elif any(KEXEC_FILE_LOG.search(line) for line in kernel_lines):
        by_log = "kexec_file_load"
    else:
        by_log = None
    return {"by_command": by_command, "by_log": by_log}


def page_digest(data) -> int:
    """CRC-32 of a page: finds pages that differ (nothing here is adversarial), and 1 GiB
    of them hash in a few seconds on a loaded host where BLAKE2 took 14 s."""
    return zlib.crc32(data)


def hash_ram(memory: GuestMemory, iomem: dict) -> dict[int, int]:
    """pfn -> digest of every page the dump may hold (see the module doc)."""
    digests = {}
    for start, end in expected_ranges(iomem["system_ram"], iomem["crashkernel"]):
        start = max(start, LOW_MEMORY_END)
        for chunk in range(start, end, CHUNK):
            data = memory.read(chunk, min(CHUNK, end - chunk))
            view = memoryview(data)
            for off in range(0, len(data) - PAGE + 1, PAGE):
                digests[(chunk + off) // PAGE] = page_digest(view[off:off + PAGE])
    return digests


def check_pages(dump: KdumpFile, truth: dict[int, int]) -> dict:
    """Every dumped page against the RAM file's page at the crash."""
    compared, differ, outside = 0, [], 0
    try:
        for pfn, data in dump.pages():
            want = truth.get(pfn)
            if want is None:  # the low 1 MiB, the reservation, or not System RAM
                outside += 1
                continue
            compared += 1
            if page_digest(data) != want:
                differ.append(pfn)
    except KdumpFormatError as exc:
        return {"problems": [str(exc)], "compared": compared}
    problems = []
    if differ:
        problems.append(f"{len(differ)} of {compared} dumped pages differ from the RAM file at the "
                        f"crash (pfn {', '.join(hex(p) for p in differ[:MAX_LISTED])})")
    if compared == 0:
        problems.append("the dump holds no page of the crashed kernel's RAM")
    return {"compared": compared, "differ": len(differ), "not_checked": outside,
            "differ_pfns": [hex(p) for p in differ[:MAX_LISTED]], "problems": problems}


def check_log(dmesg: str | None, panic_lines: list[str]) -> dict:
    """The console's panic line in kdump-tools' dmesg file."""
    if dmesg is None:
        return {"problems": ["kdump-tools saved no dmesg file"]}
    lines = [DMESG_TIMESTAMP.sub("", line).strip() for line in dmesg.splitlines()]
    wanted = [DMESG_TIMESTAMP.sub("", line).strip() for line in panic_lines if "Kernel panic" in line]
    if not wanted:
        return {"problems": ["the console showed no panic line to look for"]}
    found = [w for w in wanted if any(w in line for line in lines)]
    problems = [] if found else [f"the dmesg file lacks the console's {wanted[0]!r}"]
    task = crashed_task(lines)
    if task is None:
        problems.append("the dmesg file names no task after the sysrq crash")
    elif task["comm"] != CRASHING_COMM:
        problems.append(f"the dump says {task['comm']!r} crashed, not the lab's {CRASHING_COMM!r}")
    return {"panic_line": wanted[0], "found": bool(found), "dmesg_lines": len(lines),
            "crashed_task": task, "problems": problems}


def crashed_task(lines: list[str]) -> dict | None:
    """The task the crashed kernel's log names right after "sysrq: Trigger a crash" (its
    `CPU: n PID: p Comm: name` line, dump_stack's header), as the dump's own log tells it."""
    after = next((i for i, line in enumerate(lines) if "sysrq: Trigger a crash" in line), None)
    if after is None:
        return None
    for line in lines[after:after + 40]:
        if m := TASK_LINE.search(line):
            return {"cpu": int(m[1]), "pid": int(m[2]), "comm": m[3]}
    return None


def check_release(dump: KdumpFile, release: str) -> dict:
    said = dump.release
    osrelease = next((line.split("=", 1)[1] for line in dump.vmcoreinfo.splitlines()
                      if line.startswith("OSRELEASE=")), None)
    problems = [f"the dump is of {said!r}, not {release!r}"] if said != release else []
    if osrelease not in (None, release):
        problems.append(f"its VMCOREINFO names {osrelease!r}, not {release!r}")
    return {"utsname_release": said, "vmcoreinfo_osrelease": osrelease, "problems": problems}
