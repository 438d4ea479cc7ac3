"""The CPUs from the dump: PRSTATUS notes read, the panicking CPU from the dump's log, on
recorded dump heads and logs (tests/data/debian-6.12) and the kernel's own kallsyms."""

from __future__ import annotations

from recorded import DATA, message, result

from labctl.evidence import dump_cpus
from labctl.evidence.smp import CpuWatch, stopped_where
from labctl.evidence.vmcore import vmcoreinfo


class Excerpt:
    """Names addresses with tests/data/debian-6.12/kallsyms-excerpt.txt, moved by a dump's
    KASLR offset: the few symbols these dumps' PCs fall in."""

    def __init__(self, head: bytes):
        offset = int(vmcoreinfo(head)["KERNELOFFSET"], 16)
        rows = [line.split() for line in (DATA / "debian-6.12" / "kallsyms-excerpt.txt").read_text().splitlines()
                if not line.startswith("#")]
        self.symbols = [(int(a, 16) + offset, int(s, 16), n) for a, s, n in rows]

    def name(self, address: int) -> str | None:
        return next((f"{n}+{address - a:#x}" for a, s, n in self.symbols if a <= address < a + s), None)


def head_of(scenario: str) -> bytes:
    return bytes.fromhex(message("debian-6.12", scenario, "hello", role="capture")["vmcore_head"])


PANIC_LOG = ["sysrq: Trigger a crash", "Kernel panic - not syncing: sysrq triggered crash",
             "CPU: 1 UID: 0 PID: 142 Comm: kexec-lab-helpe Kdump: loaded Not tainted 6.12.117 #1"]


def test_prstatus_notes_are_parsed_register_by_register():
    """crash-intact-cpu1 on debian-6.12: two CPUs, the panic on CPU 1 (pinned there)."""
    notes = dump_cpus.prstatus_notes(head_of("crash-intact-cpu1"))
    assert [(n.pid, hex(n.pc), n.user) for n in notes] == [
        (0, "0xffffffff87e93f8f", False), (142, "0xffffffff873d39ec", False)]
    assert notes[1].sp == 0xff5d5c9440433b98  # rsp, the 20th word of pr_reg
    # the older count-and-RIP view agrees
    saved = result("debian-6.12", "crash-intact-cpu1")["evidence"]["verdict"]["vmcore"]["prstatus_saved"]
    assert saved == [{"pid": n.pid, "rip": hex(n.pc)} for n in notes]


def test_the_panicking_cpu_comes_from_the_dump_log_and_its_crash_path_note():
    head = head_of("crash-intact-cpu1")
    evidence = dump_cpus.check(head, PANIC_LOG, [0, 1], Excerpt(head))
    assert evidence["problems"] == []
    assert evidence["panic_cpu"] == 1 and evidence["crash_path_cpus"] == [1]
    assert evidence["by_cpu"]["0"]["symbol"] == "pv_native_safe_halt+0xf"  # idle when the NMI came
    assert evidence["by_cpu"]["1"]["symbol"] == "__crash_kexec+0x11c"


def test_a_log_that_names_another_cpu_or_pid_is_a_problem():
    head = head_of("crash-intact-cpu1")
    wrong_cpu = PANIC_LOG[:2] + [PANIC_LOG[2].replace("CPU: 1", "CPU: 0").replace("PID: 142", "PID: 0")]
    problems = dump_cpus.check(head, wrong_cpu, [0, 1], Excerpt(head))["problems"]
    assert problems == ["the log in the dump says CPU 0 panicked, but the note(s) saved in the crash "
                        "path (__crash_kexec, crash_kexec) are CPU(s) [1] (CPU 0 at "
                        "pv_native_safe_halt+0xf)"]
    wrong_pid = PANIC_LOG[:2] + [PANIC_LOG[2].replace("PID: 142", "PID: 77")]
    assert dump_cpus.check(head, wrong_pid, [0, 1], Excerpt(head))["problems"] == [
        "the log in the dump says PID 77 panicked on CPU 1, but CPU 1's PRSTATUS note has pid 142"]

def test_without_dump_stack_in_the_log_the_crash_path_note_names_the_cpu():
    """kernel/panic.c prints dump_stack() only under CONFIG_DEBUG_BUGVERBOSE (tiny-6.12-serial
    has none): then the one note saved in the crash path names the panicking CPU."""
    head = head_of("crash-intact-cpu1")
    evidence = dump_cpus.check(head, PANIC_LOG[:2], [0, 1], Excerpt(head))
    assert evidence["problems"] == [] and evidence["panic_cpu"] == 1
    assert evidence["log_why"].endswith("only under CONFIG_DEBUG_BUGVERBOSE")
    assert "panic_cpu" not in dump_cpus.check(head, PANIC_LOG[:2], [0, 1], None)


def test_a_note_whose_pc_is_nowhere_was_not_saved_by_the_crash_path():
    head = head_of("crash-intact-cpu1")
    at = head.index((0xffffffff87e93f8f).to_bytes(8, "little"))  # CPU 0's saved RIP
    garbage = head[:at] + bytes(8) + head[at + 8:]
    problems = dump_cpus.check(garbage, PANIC_LOG, [0, 1], Excerpt(head))["problems"]
    assert problems == ["CPU 0's PRSTATUS note has PC 0x0, outside the kernel's text: not registers "
                        "the crash NMI saved"]


def test_the_cpu_watch_takes_the_panicking_cpu_from_the_dump_and_names_qmp_rips():
    """An NMI panic prints nothing on the console before kexec: without the dump the lab could
    only call the CPU that went on the panicking one (which cannot then fail)."""
    watch = CpuWatch(online=[0, 1], apicids=[[0, 0], [1, 1]])
    verdict = {"capture_cpus": [[0, 1]], "vmcore": {"prstatus_notes": 2},
               "dump": {"cpus": {"panic_cpu": 1, "qmp_rips": {"0": "native_halt+0xe"}}}}
    facts = watch.evidence(verdict)
    assert facts["panic_cpu"] == 1 and facts["panic_cpu_from"].startswith("the dump")
    verdict["dump"]["cpus"]["panic_cpu"] = 0  # the dump names a CPU other than the one that went on
    assert "CPU 0 panicked (APIC id 0), but vCPU/APIC id 1 went on" in watch.evidence(verdict)["problems"][0]
    assert stopped_where("native_halt+0xe") and stopped_where("crash_nmi_callback+0x50")
    assert not stopped_where("pv_native_safe_halt+0xf") and not stopped_where(None)


def test_a_decoded_kallsyms_table_is_cached_per_build_and_moved_by_kaslr(tmp_path):
    """kernel_symbols.Table: function symbols without the KASLR offset, saved and loaded."""
    from labctl.evidence.kernel_symbols import Table
    table = Table.of([(0x1000, 0x130, "__crash_kexec"), (0x2000, 0x20, "native_halt")])
    table.save(tmp_path / "build.kallsyms")
    moved = Table.load(tmp_path / "build.kallsyms", offset=0x38e00000)
    assert moved.name(0x38e0111c) == "__crash_kexec+0x11c" and moved.name(0x38e0200e) == "native_halt+0xe"
    assert moved.name(0x38e01130) is None and moved.name(0) is None  # between, below


def test_a_cpu_without_its_note_leaves_the_notes_unmapped():
    """cpu-hotplug on debian-6.1: CPU 1, hot-added after the load, panicked; 6.1 does not
    rewrite the headers, so the dump has CPU 0's note only (smp.py counts it against the
    scenario's prstatus_notes): which note is whose is not guessed."""
    head = head_of("crash-intact-cpu1")
    one = dump_cpus.check(head, PANIC_LOG, [0, 1, 2], Excerpt(head))
    assert one["by_cpu"] is None and one["problems"] == [] and one["log"]["cpu"] == 1
