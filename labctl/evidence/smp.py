"""Several CPUs: how many a run gets, where the panic starts, and what the others did.

The multi-CPU kdump path is where kdump breaks: the panicking CPU stops the others
with an NMI (arch/x86/kernel/reboot.c: nmi_shootdown_cpus, crash_nmi_callback), each
stopped CPU saves its registers as its own PRSTATUS note (arch/x86/kernel/crash.c:
kdump_nmi_callback -> crash_save_cpu), and the capture kernel boots on the CPU that
panicked, which need not be the boot CPU.  The evidence comes from three places that
do not depend on each other: the console (the panic's `CPU: N` line, from dump_stack
in panic()), QMP's register dumps of every vCPU, and what the capture kernel's helper
reports (/proc/cpuinfo's APIC id of the one CPU it runs on).

vCPU index, APIC id and Linux CPU number: QEMU gives x86 vCPU i (one core and one
thread per socket, the lab's topology) APIC id i; Linux numbers the CPUs it finds in
the MADT in that order, so the three agree for the CPUs the guest booted with.  The
lab still records the guest's own processor -> apicid table and compares APIC ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from labctl.config.schema import Expected, MachineConfig, Scenario
from labctl.errors import ConfigError

# dump_stack's first line (lib/dump_stack.c: dump_stack_print_info); 6.12 adds UID.
STACK_CPU = re.compile(r"CPU: (\d+) (?:UID: \d+ )?PID: \d+ Comm: [^\r\n]*")
CPU_HEADER = re.compile(r"^CPU#(\d+)", re.MULTILINE)
STATE = re.compile(r"\bRIP=([0-9a-f]+) RFL=([0-9a-f]+) \[[^\]]*\] CPL=(\d) .*?\bHLT=(\d)")
X86_IF = 0x200  # RFLAGS.IF: a halted CPU with IF clear wakes only for NMI, SMI or INIT
SPIN_BYTES = 16  # a tight loop (pause; jmp) stays within this many bytes
KERNEL_HALF = 0xFFFF800000000000  # x86_64 kernel addresses (4-level and 5-level paging)
# Where QMP finds a CPU the crash NMI stopped, named with the crashed kernel's kallsyms
# (dump_cpus.name_vcpus): crash_nmi_callback's halt() (native_halt, not inlined in Debian's
# 6.12) or its cpu_relax() loop after it (arch/x86/kernel/reboot.c).
STOP_PATH = ("native_halt", "crash_nmi_callback", "nmi_panic_self_stop", "halt")


def resolve_cpus(machine: MachineConfig, scenario: Scenario) -> tuple[int, int]:
    """(smp, maxcpus) for a run: the scenario's own, else lab.yaml's machine.smp.
    Rules that depend on lab.yaml's default are checked here, naming the scenario key."""
    smp = scenario.cpus.smp or machine.smp
    maxcpus = scenario.cpus.maxcpus or smp
    if maxcpus < smp:
        raise ConfigError(f"maxcpus {maxcpus} is less than smp {smp} (lab.yaml's machine.smp "
                          "when the scenario does not set it)", key=("machine", "maxcpus"))
    if scenario.trigger_cpu is not None and scenario.trigger_cpu >= smp + _hot_added(scenario):
        raise ConfigError(f"CPU {scenario.trigger_cpu} will not be online: the guest has {smp} "
                          f"CPU(s) (+{_hot_added(scenario)} hot-added); set machine.smp",
                          key=("trigger", "cpu"))
    if scenario.hotplug and smp + scenario.hotplug.cpus > maxcpus:
        raise ConfigError(f"cannot hot-add {scenario.hotplug.cpus} CPU(s) to {smp} with maxcpus "
                          f"{maxcpus}; raise machine.maxcpus", key=("hotplug", "cpus"))
    return smp, maxcpus


def _hot_added(scenario: Scenario) -> int:
    return scenario.hotplug.cpus if scenario.hotplug else 0


@dataclass(frozen=True)
class VcpuState:
    """One vCPU in one `info registers -a` sample."""

    rip: int
    rflags: int
    cpl: int
    halted: bool

    @property
    def in_kernel(self) -> bool:
        return self.cpl == 0 and self.rip >= KERNEL_HALF

    @property
    def stopped_shape(self) -> bool:
        """Halted in the kernel with interrupts off: what crash_nmi_callback leaves."""
        return self.in_kernel and self.halted and not self.rflags & X86_IF

    def spins_with(self, previous: "VcpuState | None") -> bool:
        """In kernel text with interrupts off in both samples, RIP within a few bytes: a
        tight loop such as crash_nmi_callback's `for (;;) cpu_relax();` after its halt.
        2 of 10 smp-2 runs on 6.1 had the other CPU not halted at one kernel RIP; which
        loop that was is not known (those runs were not kept)."""
        return (previous is not None and self.in_kernel and previous.in_kernel
                and not (self.rflags | previous.rflags) & X86_IF
                and abs(self.rip - previous.rip) < SPIN_BYTES)

    def left_halt(self, previous: "VcpuState | None") -> bool:
        """Halted with interrupts off in the previous sample, now awake in the kernel with
        interrupts still off: crash_nmi_callback's halt() ended and its `for (;;) cpu_relax();`
        began between the two samples (only an NMI, SMI or INIT ends such a halt; the stop
        path check by symbol still applies).  Seen on debian-6.1 crash-intact-cpu1: the last
        sample at crash_nmi_callback+0x3f, not halted, IF=0."""
        return (previous is not None and previous.stopped_shape and self.in_kernel
                and not self.rflags & X86_IF)

    def to_json(self) -> dict:
        return {"rip": hex(self.rip), "cpl": self.cpl, "halted": self.halted,
                "interrupts": bool(self.rflags & X86_IF), "kernel_text": self.in_kernel}


def parse_vcpu_states(text: str) -> dict[int, VcpuState]:
    """vCPU index -> state, from HMP `info registers -a` (a lone CPU has no CPU# header)."""
    headers: list[re.Match[str] | None] = [*CPU_HEADER.finditer(text)] or [None]
    states = {}
    for i, header in enumerate(headers):
        start = header.end() if header else 0
        following = headers[i + 1] if i + 1 < len(headers) else None
        end = following.start() if following else len(text)
        if m := STATE.search(text, start, end):
            states[int(header[1]) if header else 0] = VcpuState(
                int(m[1], 16), int(m[2], 16), int(m[3]), m[4] == "1")
    return states


def apic_of(cpus: list, cpu: int | None) -> int | None:
    """The APIC id of Linux CPU `cpu` in a helper's [[processor, apicid], ...] table."""
    return next((apic for number, apic in cpus or [] if number == cpu), None)


@dataclass
class CpuWatch:
    """Feeds on observe's console hits and register samples; says where the panic ran
    and what every other vCPU was doing after it."""

    online: list[int]  # Linux CPUs online just before the trigger
    apicids: list = field(default_factory=list)  # the primary's [[processor, apicid], ...]
    requested: int | None = None  # the scenario's trigger cpu
    pinned: int | None = None  # where the helper ran when it wrote to sysrq-trigger
    panic_cpu: int | None = None  # from the console
    panic_line: str | None = None
    samples: list[dict[int, VcpuState]] = field(default_factory=list)
    _after_panic: bool = False
    last_registers: str = ""  # kept as registers.txt, whatever the outcome
    expected_notes: int | None = None  # the scenario's prstatus_notes for this kernel
    hotplug: dict | None = None  # runner.step_hotplug's evidence
    expected_elfcorehdr: str | None = None  # changed | unchanged after the hot-add

    patterns = {"stack_cpu": re.compile(STACK_CPU.pattern + r"\r?\n")}  # whole lines only

    def console(self, hits: list[tuple[str, str]]) -> None:
        """The first dump_stack header after the panic line names the panicking CPU (a
        panic in NMI context prints nothing before kexec: printk defers it)."""
        for name, line in hits:
            if name == "panic":
                self._after_panic = True
            elif name == "stack_cpu" and self._after_panic and self.panic_cpu is None \
                    and (m := STACK_CPU.match(line)):
                self.panic_cpu, self.panic_line = int(m[1]), line.strip()

    def sample(self, registers: str) -> None:
        """A register sample after the trigger: only the last two are judged, long after
        the panic; an idle CPU before it halts with interrupts on, so never looks stopped."""
        self.samples.append(parse_vcpu_states(registers))
        self.last_registers = registers

    def evidence(self, verdict: dict) -> dict:
        """Facts and the problems they show (judge fails a run that has any)."""
        facts: dict = {"online": self.online, "requested": self.requested, "pinned": self.pinned,
                       "panic_cpu_line": self.panic_line, "apicids": self.apicids,
                       "samples": len(self.samples), "problems": []}
        problems = facts["problems"]
        vcpu = None  # the vCPU that panicked: parked in purgatory or running the capture kernel
        if parked := verdict.get("parked"):
            vcpu = facts["parked_vcpu"] = parked["cpu"]
        if "capture_cpus" in verdict:  # the capture kernel booted, even if its dump then mismatched
            vcpu = self._capture_cpu(facts, verdict.get("capture_cpus"))
            self._dump_notes(facts, verdict.get("vmcore") or {})
        self._headers(facts, (verdict.get("vmcore") or {}) if "capture_cpus" in verdict else None)
        panic, facts["panic_cpu_from"] = self._panic_cpu(vcpu)
        dumped = ((verdict.get("dump") or {}).get("cpus") or {})
        if dumped.get("panic_cpu") is not None:  # the dump's log and notes (dump_cpus.py)
            if panic is not None and self.panic_cpu is not None and panic != dumped["panic_cpu"]:
                problems.append(f"the console says CPU {panic} panicked, the dump CPU {dumped['panic_cpu']}")
            panic, facts["panic_cpu_from"] = dumped["panic_cpu"], "the dump (its log's CPU line, its PRSTATUS notes)"
        facts["panic_cpu"] = panic
        if self.requested is not None and panic != self.requested:
            problems.append(f"the panic was to start on CPU {self.requested}, it ran on CPU {panic}")
        if vcpu is not None and panic is not None and apic_of(self.apicids, panic) != vcpu:
            problems.append(f"CPU {panic} panicked (APIC id {apic_of(self.apicids, panic)}), "
                            f"but vCPU/APIC id {vcpu} went on (parked or capture kernel)")
        if vcpu is None:
            vcpu = apic_of(self.apicids, panic)
        facts["others"] = self._others(vcpu, problems)
        for cpu, named in (dumped.get("qmp_rips") or {}).items():
            other = facts["others"].get(cpu) or {}
            if other.get("role", "").startswith("stopped") and not stopped_where(named):
                problems.append(f"vCPU {cpu} stopped at {named or other.get('rip')}, not where the crash "
                                "NMI halts a CPU (crash_nmi_callback)")
            if other:
                other["symbol"] = named
        return facts

    def _panic_cpu(self, vcpu: int | None) -> tuple[int | None, str | None]:
        """Which Linux CPU panicked, and the evidence that says so, best first."""
        if self.panic_cpu is not None:
            return self.panic_cpu, "console"
        if self.requested is not None and self.pinned is not None:
            return self.pinned, "helper pinned there"
        by_apic = next((cpu for cpu, apic in self.apicids if apic == vcpu), None)
        return (by_apic, "APIC id of the CPU that went on") if by_apic is not None else (None, None)

    def _capture_cpu(self, facts: dict, table: list | None) -> int | None:
        """The capture kernel runs on one CPU (nr_cpus=1): its APIC id names the vCPU."""
        table = table or []
        facts["capture_apicid"] = table[0][1] if len(table) == 1 else None
        if facts["capture_apicid"] is None:
            facts["problems"].append(f"the capture kernel reported no single CPU: {table!r}")
        return facts["capture_apicid"]

    def _dump_notes(self, facts: dict, vmcore: dict) -> None:
        """One PRSTATUS note per CPU online at the crash: the elfcorehdr has a PT_NOTE for
        every possible CPU (kernel/crash_core.c: crash_prepare_elf64_headers), only CPUs
        that ran crash_save_cpu() fill theirs, and the capture kernel drops the empty ones
        (fs/proc/vmcore.c: update_note_header_size_elf64)."""
        notes = vmcore.get("prstatus_notes")
        want = len(self.online) if self.expected_notes is None else self.expected_notes
        facts["dump_prstatus_notes"] = notes
        facts["dump_prstatus_saved"] = vmcore.get("prstatus_saved")
        if notes != want:
            facts["problems"].append(f"the dump has {notes} PRSTATUS note(s), expected {want} "
                                     f"({len(self.online)} CPU(s) online at the crash)")

    def _headers(self, facts: dict, vmcore: dict | None) -> None:
        """A hot-add either rewrote the ELF core headers in guest RAM or left them as loaded;
        a hot-added DIMM is in the dump exactly when they were rewritten (or reloaded)."""
        if self.hotplug is None:
            return
        if (dimm := (self.hotplug.get("memory") or {}).get("dimm")) and vmcore is not None:
            start, end = int(dimm["address"], 16), int(dimm["address"], 16) + int(dimm["size"], 16)
            covered = any(int(a, 16) <= start and end <= int(b, 16) for a, b in vmcore.get("load_ranges", []))
            facts["dump_covers_hot_memory"] = covered
            described = self.hotplug.get("elfcorehdr_changed") or "elfcorehdr_reloaded" in self.hotplug
            if covered != described:
                facts["problems"].append(f"the dump {'covers' if covered else 'misses'} the hot-added "
                                         f"DIMM at {dimm['address']}, but the ELF core headers "
                                         f"{'describe' if described else 'do not describe'} it")
        changed = self.hotplug.get("elfcorehdr_changed")
        facts["elfcorehdr_after_hotplug"] = "changed" if changed else "unchanged"
        if self.expected_elfcorehdr and facts["elfcorehdr_after_hotplug"] != self.expected_elfcorehdr:
            facts["problems"].append(f"after the CPU hot-add the ELF core headers in guest RAM are "
                                     f"{facts['elfcorehdr_after_hotplug']}, expected "
                                     f"{self.expected_elfcorehdr}")

    def _others(self, runner: int | None, problems: list[str]) -> dict:
        """Every vCPU but the one that panicked: stopped means the same state in the last two
        samples, kernel text, CPL 0, halted with interrupts off; or, with interrupts off in
        both, spinning within a few bytes of kernel text; or leaving such a halt for a spin
        with interrupts still off."""
        if len(self.samples) < 2:
            if self._online_vcpus() - {runner}:
                problems.append(f"{len(self.samples)} register sample(s) after the trigger: "
                                "cannot tell whether the other CPUs stopped")
            return {}
        last, previous = self.samples[-1], self.samples[-2]
        out = {}
        for cpu, state in sorted(last.items()):
            if cpu == runner:
                out[str(cpu)] = {**state.to_json(), "role": "panicked"}
                continue
            still = previous.get(cpu) == state
            role = "stopped" if still and state.stopped_shape else \
                "stopped (spinning)" if state.spins_with(previous.get(cpu)) else \
                "stopped (halt, then spinning)" if state.left_halt(previous.get(cpu)) else "not stopped"
            out[str(cpu)] = {**state.to_json(), "unchanged": still, "role": role}
            if cpu in self._online_vcpus() and role == "not stopped":
                problems.append(f"vCPU {cpu} was not stopped after the panic: {state.to_json()}")
        return out

    def _online_vcpus(self) -> set[int]:
        """vCPU indexes of the CPUs Linux had online (APIC id = vCPU index, see above)."""
        return {apic for cpu in self.online if (apic := apic_of(self.apicids, cpu)) is not None}


def stopped_where(name: str | None) -> bool:
    """Whether a QMP-sampled RIP (function+0xoff) is where the crash NMI leaves a stopped CPU."""
    return name is not None and name.split("+")[0] in STOP_PATH


def cpu_problem(evidence: dict) -> str | None:
    """The first thing the CPU evidence contradicts, for judge()."""
    problems = (evidence.get("cpus") or {}).get("problems") or []
    return problems[0] if problems else None


def parse_cpulist(text: str | None) -> list[int]:
    """A kernel CPU list ("0-2,4") as numbers; bad input (untrusted guest text) gives []."""
    cpus: list[int] = []
    for part in (text or "").split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            return []
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def cpus_do_not_apply(facts: dict, smp: int, maxcpus: int) -> ConfigError | None:
    """A scenario that needs more CPUs than the booted kernel can use does not apply to it:
    a configuration-class result, never a verdict and never an infra error.  Evidence: the
    kernel's own online and possible masks (a kernel without CONFIG_SMP has nr_cpu_ids 1, so
    it brings up CPU 0 whatever -smp says, and has no room for a hot-added CPU)."""
    online, possible = parse_cpulist(facts.get("cpus_online")), parse_cpulist(facts.get("cpus_possible"))
    if smp > 1 and online and len(online) < smp:
        return ConfigError(f"the scenario runs {smp} CPUs, but this kernel brought up only CPU(s) "
                           f"{facts.get('cpus_online')!r} of the {smp} QEMU offered "
                           "(/sys/devices/system/cpu/online): it does not apply to this kernel",
                           key=("machine", "smp"))
    if maxcpus > smp and possible and len(possible) < maxcpus:
        return ConfigError(f"the scenario hot-adds CPUs up to {maxcpus}, but this kernel can use "
                           f"only CPU(s) {facts.get('cpus_possible')!r} "
                           "(/sys/devices/system/cpu/possible): it does not apply to this kernel",
                           key=("machine", "maxcpus"))
    return None


def cpu_watch(facts: dict, requested: int | None, expected: Expected | None = None,
              hotplug: dict | None = None) -> CpuWatch:
    """A watch for the CPUs the helper last reported (its hello or a `cpus` reply)."""
    expected = expected or Expected("")
    return CpuWatch(online=parse_cpulist(facts.get("cpus_online")), apicids=facts.get("cpus") or [],
                    requested=requested, expected_notes=expected.prstatus_notes, hotplug=hotplug,
                    expected_elfcorehdr=expected.elfcorehdr)
