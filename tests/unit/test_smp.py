"""Several CPUs: scenario settings, and the CPU evidence on recorded 2-vCPU runs.

The recordings (tests/data/<kernel>/crash-{intact,corrupt}-cpu1, crash-intact-nmi-smp2)
come from real 2-vCPU guests panicking on CPU 1 (sysrq, the helper pinned there) or by
QMP's inject-nmi; serial-panic.log is the console from the trigger on.
"""

from pathlib import Path

import pytest
from recorded import DATA, KERNELS, control_messages, message, registers, result
from test_config import assert_config_error, write

from labctl.config.schema import MachineConfig, load_scenario
from labctl.errors import ConfigError
from labctl.evidence.smp import CpuWatch, cpu_watch, parse_cpulist, parse_vcpu_states, resolve_cpus
from labctl.evidence.verdict import judge
from labctl.evidence.vmcore import check_vmcore
from labctl.guest.machine import MachineSpec, qemu_argv

ROOT = Path(__file__).resolve().parents[2]
RUNS = [(k, s) for k in KERNELS for s in ("crash-intact-cpu1", "crash-corrupt-cpu1")]


def hellos(kernel: str, scenario: str) -> tuple[dict, dict | None]:
    """The primary's hello and the capture kernel's (None when purgatory refused)."""
    found = [m for m in control_messages(kernel, scenario) if m["type"] == "hello"]
    capture = next((m for m in found if m["role"] == "capture"), None)
    return found[0], capture


def console_hits(kernel: str, scenario: str) -> list[tuple[str, str]]:
    """The recorded console as observe's pattern hits, in order."""
    hits = []
    for line in (DATA / kernel / scenario / "serial-panic.log").read_text().splitlines(keepends=True):
        if "Kernel panic - not syncing" in line:
            hits.append(("panic", line.rstrip("\r\n")))
        elif (m := CpuWatch.patterns["stack_cpu"].search(line)):  # whole lines, as the console
            hits.append(("stack_cpu", m[0].rstrip("\r\n")))
    return hits


def replay(kernel: str, scenario: str, samples: list[str]) -> CpuWatch:
    primary, _ = hellos(kernel, scenario)
    watch = cpu_watch(primary, requested=1)
    watch.pinned = message(kernel, scenario, "panicking")["cpu"]
    watch.console(console_hits(kernel, scenario))
    for text in samples:
        watch.sample(text)
    return watch


def verdict_of(kernel: str, scenario: str) -> dict:
    """The verdict evidence as observe builds it, from the recorded messages."""
    recorded = result(kernel, scenario)["evidence"]["verdict"]
    _, capture = hellos(kernel, scenario)
    if capture is None:
        return {"parked": recorded["parked"]}
    return {"capture_cpus": capture["cpus"],
            "vmcore": check_vmcore(capture["vmcore_size"], capture["vmcore_head"], capture["release"])}


# ------------------------------------------------------------------ register dumps

@pytest.mark.parametrize("kernel", KERNELS)
def test_two_vcpu_dump_shows_the_stopped_cpu_and_the_parked_one(kernel):
    states = parse_vcpu_states(registers(kernel, "crash-corrupt-cpu1"))
    assert set(states) == {0, 1}
    assert states[0].stopped_shape  # halted in kernel text with interrupts off
    assert states[0].in_kernel and states[0].halted and not states[0].rflags & 0x200
    parked = result(kernel, "crash-corrupt-cpu1")["evidence"]["verdict"]["parked"]
    assert parked["cpu"] == 1 and states[1].rip == int(parked["rip"], 16)
    assert not states[1].in_kernel and not states[1].halted  # spinning on purgatory's jmp .


def test_an_idle_cpu_is_not_a_stopped_one():
    """Before the panic an idle CPU halts too, but with interrupts on (sti; hlt)."""
    idle = parse_vcpu_states("RIP=ffffffff81a0b15e RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1")
    user = parse_vcpu_states("RIP=0000000000401000 RFL=00000046 [---Z-P-] CPL=3 II=0 A20=1 SMM=0 HLT=0")
    assert idle[0].halted and not idle[0].stopped_shape
    assert not user[0].in_kernel and not user[0].stopped_shape


# ------------------------------------------------------------------ replayed runs

@pytest.mark.parametrize("kernel,scenario", RUNS)
def test_recorded_cpu1_runs_have_consistent_evidence(kernel, scenario):
    dump = registers(kernel, scenario)  # the last sample, twice: CPU 0 stopped in both
    facts = replay(kernel, scenario, [dump, dump]).evidence(verdict_of(kernel, scenario))
    assert facts["problems"] == []
    assert facts["panic_cpu"] == 1 and facts["panic_cpu_from"] == "console"
    assert facts["panic_cpu_line"].startswith("CPU: 1 ")
    assert facts["others"]["0"]["role"] == "stopped"
    if scenario == "crash-intact-cpu1":
        assert facts["capture_apicid"] == 1  # the capture kernel runs on CPU 1's APIC
        assert facts["dump_prstatus_notes"] == 2  # CPU 0's note, saved by the crash NMI
        pids = [n["pid"] for n in facts["dump_prstatus_saved"]]
        assert 0 in pids and message(kernel, scenario, "panicking") is not None
    else:
        assert facts["parked_vcpu"] == 1


def test_capture_kernel_on_the_wrong_cpu_fails_the_run():
    kernel, scenario = "debian-6.1", "crash-intact-cpu1"
    dump = registers(kernel, scenario)
    verdict = {**verdict_of(kernel, scenario), "capture_cpus": [[0, 0]]}
    facts = replay(kernel, scenario, [dump, dump]).evidence(verdict)
    assert any("APIC id 1" in p for p in facts["problems"]), facts["problems"]
    passed, reason = judge("capture-booted", "capture-booted", {**verdict, "cpus": facts})
    assert not passed and "the CPUs disagree" in reason


def test_panic_on_another_cpu_than_asked_fails():
    kernel, scenario = "debian-6.12", "crash-corrupt-cpu1"
    watch = replay(kernel, scenario, [registers(kernel, scenario)] * 2)
    watch.panic_cpu = 0  # as if the console had said CPU: 0
    facts = watch.evidence(verdict_of(kernel, scenario))
    assert "the panic was to start on CPU 1, it ran on CPU 0" in facts["problems"]


def test_another_cpu_still_running_fails():
    kernel, scenario = "debian-6.12", "crash-corrupt-cpu1"
    running = registers(kernel, scenario).replace("RFL=00000046 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1",
                                                  "RFL=00000246 [---Z-P-] CPL=3 II=0 A20=1 SMM=0 HLT=0")
    facts = replay(kernel, scenario, [running, running]).evidence(verdict_of(kernel, scenario))
    assert any(p.startswith("vCPU 0 was not stopped") for p in facts["problems"])


def test_a_missing_note_fails_and_one_sample_is_not_enough():
    kernel, scenario = "debian-6.12", "crash-intact-cpu1"
    verdict = verdict_of(kernel, scenario)
    verdict["vmcore"] = {**verdict["vmcore"], "prstatus_notes": 1}
    facts = replay(kernel, scenario, [registers(kernel, scenario)]).evidence(verdict)
    assert "the dump has 1 PRSTATUS note(s), expected 2 (2 CPU(s) online at the crash)" in facts["problems"]
    assert any("cannot tell whether the other CPUs stopped" in p for p in facts["problems"])


def test_nmi_panic_names_its_cpu_by_the_capture_kernels_apic_id():
    """inject-nmi reaches both vCPUs; a panic in NMI context prints nothing before kexec,
    so the capture kernel's APIC id is what names the CPU that won."""
    kernel, scenario = "debian-6.1", "crash-intact-nmi-smp2"
    primary, capture = hellos(kernel, scenario)
    watch = cpu_watch(primary, requested=None)
    facts = watch.evidence(verdict_of(kernel, scenario))
    assert facts["panic_cpu_line"] is None and facts["panic_cpu_from"] == "APIC id of the CPU that went on"
    assert facts["panic_cpu"] == [cpu for cpu, apic in primary["cpus"] if apic == capture["cpus"][0][1]][0]
    assert facts["dump_prstatus_notes"] == 2


@pytest.mark.parametrize("kernel", KERNELS)
def test_dump_of_a_two_cpu_guest_has_two_prstatus_notes(kernel):
    _, capture = hellos(kernel, "crash-intact-cpu1")
    facts = check_vmcore(capture["vmcore_size"], capture["vmcore_head"], capture["release"])
    assert facts["ok"] and facts["prstatus_notes"] == 2
    assert all(int(n["rip"], 16) >= 0xFFFF800000000000 for n in facts["prstatus_saved"])
    _, single = hellos(kernel, "crash-intact")
    assert check_vmcore(single["vmcore_size"], single["vmcore_head"], single["release"])["prstatus_notes"] == 1


# ------------------------------------------------------------------ settings

def test_cpulist():
    assert parse_cpulist("0-2,4") == [0, 1, 2, 4] and parse_cpulist("0") == [0]
    assert parse_cpulist("") == [] and parse_cpulist("0-x") == [] and parse_cpulist(None) == []


def test_shipped_cpu_scenarios_and_qemu_smp(tmp_path):
    intact = load_scenario(ROOT / "scenarios" / "crash-intact-cpu1.yaml")
    assert intact.trigger == "sysrq" and intact.trigger_cpu == 1 and intact.cpus.smp == 2
    assert resolve_cpus(MachineConfig(smp=1), intact) == (2, 2)
    plain = load_scenario(write(tmp_path, "plain.yaml", "expect: capture-booted\n"))
    assert plain.trigger_cpu is None and resolve_cpus(MachineConfig(smp=3), plain) == (3, 3)
    spec = MachineSpec(kernel=Path("k"), initrd=Path("i"), cmdline="", smp=1, maxcpus=2)
    argv = qemu_argv(spec, *(Path(p) for p in ("r", "c", "t", "q")))
    assert argv[argv.index("-smp") + 1] == "1,maxcpus=2"


BAD = [
    ("expect: hang\nmachine:\n  smp: 0\n", 3, "key 'machine.smp': 0 must be greater than 0"),
    ("expect: hang\nmachine:\n  smp: 2\n  maxcpus: 1\n", 4, "key 'machine.maxcpus': must be at least"),
    ("expect: hang\nmachine:\n  cpus: 2\n", 3, "key 'machine.cpus': unknown key"),
    ("expect: hang\ntrigger:\n  kind: nmi\n  cpu: 1\n", 4, "key 'trigger.cpu': only a sysrq trigger"),
    ("expect: hang\nmachine: {smp: 2}\ntrigger:\n  cpu: 2\n", 4, "key 'trigger.cpu': CPU 2 does not exist"),
    ("expect: hang\ntrigger:\n  cpu: -1\n", 3, "key 'trigger.cpu': -1 must be 0 or more"),
    ("expect: hang\ntrigger:\n  kind: magic\n", 3, "key 'trigger.kind': 'magic' is not one of"),
    ("expect: hang\ntrigger: none\nhotplug: {cpus: 1}\n", 3, "key 'hotplug': what is hot-added only shows"),
    ("expect: hang\nhotplug: {reload: true}\n", 2, "key 'hotplug': hot-adds nothing"),
    ("expect: hang\nhotplug: {memory_mib: 100}\n", 2, "key 'hotplug.memory_mib': 100 must be 0 to 1024"),
]


@pytest.mark.parametrize("text,line,message", BAD)
def test_bad_cpu_settings_name_file_line_and_key(tmp_path, text, line, message):
    assert_config_error(load_scenario, write(tmp_path, "s.yaml", text), line, message)


def test_settings_that_depend_on_lab_yaml_name_the_scenario_key(tmp_path):
    path = write(tmp_path, "s.yaml", "expect: hang\ntrigger: {cpu: 1}\n")
    with pytest.raises(ConfigError) as err:
        resolve_cpus(MachineConfig(smp=1), load_scenario(path))
    assert err.value.key == ("trigger", "cpu") and "will not be online" in str(err.value)
    path = write(tmp_path, "m.yaml", "expect: hang\nmachine: {maxcpus: 2}\n")
    with pytest.raises(ConfigError) as err:
        resolve_cpus(MachineConfig(smp=4), load_scenario(path))
    assert err.value.key == ("machine", "maxcpus")
    path = write(tmp_path, "h.yaml", "expect: hang\nhotplug: {cpus: 1}\n")
    with pytest.raises(ConfigError) as err:
        resolve_cpus(MachineConfig(smp=1), load_scenario(path))
    assert err.value.key == ("hotplug", "cpus")


BAD_EXPECT = [
    ("expect:\n  outcome: capture-booted\n  prstatus_notes: -1\n", 3, "key 'expect.prstatus_notes'"),
    ("expect:\n  outcome: capture-booted\n  elfcorehdr: rewritten\n", 3, "key 'expect.elfcorehdr': 'rewritten'"),
    ("expect:\n  outcome: hang\n  when:\n    - config: CONFIG_X=y\n      outcome: hang\n      reason: r\n"
     "      prstatus_notes: two\n", 7, "key 'expect.when.0.prstatus_notes': must be an integer"),
]


@pytest.mark.parametrize("text,line,message", BAD_EXPECT)
def test_bad_dump_expectations_name_file_line_and_key(tmp_path, text, line, message):
    assert_config_error(load_scenario, write(tmp_path, "s.yaml", text), line, message)


def test_hotplug_expectation_on_the_headers_is_checked():
    watch = CpuWatch(online=[0, 1], apicids=[[0, 0], [1, 1]], expected_elfcorehdr="changed",
                     hotplug={"elfcorehdr_changed": False})
    facts = watch.evidence({})
    assert facts["elfcorehdr_after_hotplug"] == "unchanged"
    assert "the ELF core headers in guest RAM are unchanged, expected changed" in facts["problems"][0]


def test_a_cpu_spinning_with_interrupts_off_is_stopped_one_with_interrupts_on_is_not():
    """A CPU woken from crash_nmi_callback's halt spins in its cpu_relax loop: not halted,
    RIP moving between two instructions, interrupts off.  Interrupts on is a running CPU."""
    def sample(rip: int, rfl: str, hlt: int) -> str:
        return (f"CPU#0\nRIP={rip:016x} RFL={rfl} [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT={hlt}\n"
                "CPU#1\nRIP=000000003dffb12f RFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\n")
    for rfl, role in (("00000046", "stopped (spinning)"), ("00000246", "not stopped")):
        watch = CpuWatch(online=[0, 1], apicids=[[0, 0], [1, 1]], requested=1, pinned=1)
        watch.sample(sample(0xFFFFFFFF8106058D, rfl, 0))
        watch.sample(sample(0xFFFFFFFF8106058F, rfl, 0))
        facts = watch.evidence({"parked": {"cpu": 1}})
        assert facts["others"]["0"]["role"] == role
        assert any(p.startswith("vCPU 0 was not stopped") for p in facts["problems"]) == (role == "not stopped")
    far = CpuWatch(online=[0, 1], apicids=[[0, 0], [1, 1]], requested=1, pinned=1)
    far.sample(sample(0xFFFFFFFF81000000, "00000046", 0))
    far.sample(sample(0xFFFFFFFF81060000, "00000046", 0))
    assert far.evidence({"parked": {"cpu": 1}})["others"]["0"]["role"] == "not stopped"


def test_a_cpu_leaving_its_crash_halt_for_the_spin_between_two_samples_is_stopped():
    """debian-6.1 crash-intact-cpu1 (fresh-machine CI, 2026-12-02): vCPU 0 halted with IF=0 in
    the previous sample, awake at crash_nmi_callback+0x3f with IF=0 in the last; woken with
    interrupts on, or never halted, it is not."""
    def sample(rip: int, rfl: str, hlt: int) -> str:
        return (f"CPU#0\nRIP={rip:016x} RFL={rfl} [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT={hlt}\n"
                "CPU#1\nRIP=00000000004104c5 RFL=00000202 [-------] CPL=3 II=0 A20=1 SMM=0 HLT=0\n")
    for before, after, role in ((("00000046", 1), ("00000046", 0), "stopped (halt, then spinning)"),
                                (("00000046", 1), ("00000246", 0), "not stopped"),
                                (("00000246", 1), ("00000046", 0), "not stopped"),
                                (("00000046", 0), ("00000046", 0), "not stopped")):
        watch = CpuWatch(online=[0, 1], apicids=[[0, 0], [1, 1]], requested=1, pinned=1)
        watch.sample(sample(0xFFFFFFFF81000000, *before))
        watch.sample(sample(0xFFFFFFFF8106058F, *after))
        assert watch.evidence({"parked": {"cpu": 1}})["others"]["0"]["role"] == role, (before, after)


def test_a_scenario_needing_cpus_the_kernel_cannot_use_does_not_apply():
    """The booted kernel's own masks decide: 2 CPUs online on 6.1 -> the cpu1 scenario
    applies; the same hello asked for 4 CPUs, or a 1-CPU kernel (no CONFIG_SMP brings up
    CPU 0 only) asked for 2, is a configuration-class result naming the scenario key."""
    from labctl.evidence.smp import cpus_do_not_apply
    two = message("debian-6.1", "crash-intact-cpu1", "hello", role="primary")
    assert two["cpus_online"] == "0-1"
    assert cpus_do_not_apply(two, 2, 2) is None
    too_many = cpus_do_not_apply(two, 4, 4)
    assert isinstance(too_many, ConfigError) and too_many.key == ("machine", "smp")
    assert "brought up only CPU(s) '0-1' of the 4" in str(too_many)
    hotplug = message("debian-6.1", "cpu-hotplug", "hello", role="primary")
    assert (hotplug["cpus_online"], hotplug["cpus_possible"]) == ("0", "0-1")
    assert cpus_do_not_apply(hotplug, 1, 2) is None
    no_room = cpus_do_not_apply(hotplug, 1, 3)
    assert isinstance(no_room, ConfigError) and no_room.key == ("machine", "maxcpus")
    one_cpu = {**two, "cpus_online": "0", "cpus_possible": "0"}
    assert "does not apply to this kernel" in str(cpus_do_not_apply(one_cpu, 2, 2))
    assert cpus_do_not_apply({**two, "cpus_online": "garbage"}, 2, 2) is None  # unparsable: no claim
