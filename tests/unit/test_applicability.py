"""Applicability: which pairs a kernel cannot run, decided from its arch and config file
(recorded excerpts in tests/data/applicability/, each naming the file it comes from) and
checked again on what the booted kernel reported."""

from __future__ import annotations

from pathlib import Path

import pytest
from recorded import DATA, golden

from labctl.config.schema import LabConfig, MachineConfig, Timeouts, load_lab, load_scenario
from labctl.errors import ConfigError
from labctl.evidence.applicability import (
    MET,
    UNKNOWN,
    UNMET,
    NotApplicable,
    RequirementUnmet,
    after_boot,
    decide,
    first_unmet,
    needs_of,
    userland_check,
)
from labctl.kernel.facts import Fact, KernelFacts
from labctl.kernel.image import Kernel, parse_config
from labctl.pair.applies import skipped_result

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))
RECORDED = DATA / "applicability"


def facts_of(path: Path) -> tuple[str, KernelFacts]:
    """(arch, facts) of a recorded config (an excerpt says its arch; the recipes' are x86_64)."""
    text = path.read_text()
    arch = next((line.split("=", 1)[1] for line in text.splitlines() if line.startswith("# arch=")), "x86_64")
    return arch, KernelFacts(config_file=parse_config(text), config_file_source=f"config file {path.name}")


def kernel_configs() -> dict[str, Path]:
    """Catalogue kernel -> its recorded config: excerpts, and the recorded recipe builds."""
    found = {p.stem: p for p in RECORDED.glob("*.config")}
    for recipe in sorted((DATA / "recipes").iterdir()):
        if (recipe / "config").is_file():
            found.setdefault(recipe.name, recipe / "config")
    return dict(sorted(found.items()))


def scenario(name: str):
    return load_scenario(ROOT / "scenarios" / f"{name}.yaml")


def needs(name: str):
    s = scenario(name)
    return needs_of(s, max(s.cpus.smp or 1, s.cpus.maxcpus or 1))


def test_the_catalogue_decision_table():
    """Every recorded kernel x every scenario: which pairs skip, on which key and fact.
    The table is reviewed (tests/data/golden/applicability.txt): a change to a scenario or
    to the rule that moves a skip shows up here."""
    lines = []
    for kernel, config in kernel_configs().items():
        arch, facts = facts_of(config)
        for path in SCENARIOS:
            s = load_scenario(path)
            package = f"linux-image-for-{kernel}" if kernel.startswith("debian-") else None  # catalogue
            userland = userland_check(s, arch, package)
            unmet = first_unmet([*([userland] if userland else []),
                                 *decide(needs_of(s, max(s.cpus.smp or 1, s.cpus.maxcpus or 1)), arch, facts)])
            if unmet:
                lines.append(f"{kernel} x {s.name}: {unmet.reason}")
    golden("applicability.txt", "\n".join(lines) + "\n")
    text = "\n".join(lines)
    # the cases the nightly tripped on, each skipped with its key and the missing fact
    assert "tiny-6.12-serial x crash-intact-cpu1: machine.smp: needs 2 CPUs (CONFIG_SMP=y), but " \
           "CONFIG_SMP is not set (config file tiny-6.12-serial.config)" in text
    assert "tiny-6.12-serial x memory-hotplug: hotplug.memory_mib: needs memory hotplug" in text
    assert "debian-6.1-arm64 x crash-intact: load.method: needs kexec_file_load (CONFIG_KEXEC_FILE=y), " \
           "but CONFIG_KEXEC_FILE is not set" in text
    assert "tiny-6.12-arm64 x crash-intact-nmi: trigger: needs an NMI panic, but the kernel is arm64" in text
    assert "tiny-6.12-riscv64 x crash-intact-kexec-load: load.method" in text
    assert "tiny-6.12-arm64 x load-garbage: load.kernel" in text
    assert "tiny-6.12-serial x distro-kdump: userland: needs an x86_64 Debian-packaged kernel" in text
    assert "debian-6.1-arm64 x distro-kdump: userland: needs an x86_64 Debian-packaged kernel" in text
    # nothing skips on the full x86 kernels, and the arm64 kexec_load pairs still run
    assert not any(line.startswith(("debian-6.12 x", "debian-6.1 x")) for line in lines)
    assert not any(line.startswith("debian-6.1-arm64 x crash-corrupt-kexec-load") for line in lines)
    assert not any(line.startswith("tiny-6.12-arm64 x crash-corrupt:") for line in lines)  # answered per arch


def test_met_unmet_and_unknown():
    arch, facts = facts_of(RECORDED / "debian-6.12.config")
    assert {c.state for c in decide(needs("cpu-hotplug"), arch, facts)} == {MET}
    unknown = decide(needs("crash-intact-cpu1"), "x86_64", KernelFacts())  # no config file: the run tells
    assert {c.state for c in unknown} == {UNKNOWN} and first_unmet(unknown) is None
    arm = decide(needs("crash-corrupt-kexec-load"), "riscv64", KernelFacts())
    assert arm[0].state == UNMET and "no kexec-tools for riscv64" in arm[0].fact


def test_declared_requirements_are_checked_like_implied_ones(tmp_path):
    path = tmp_path / "needs-lockdown.yaml"
    path.write_text("requires:\n  config: CONFIG_SECURITY_LOCKDOWN_LSM=y\n  arch: [x86_64, riscv64]\n"
                    "expect: capture-booted\n")
    s = load_scenario(path)
    assert s.requires.config == ("CONFIG_SECURITY_LOCKDOWN_LSM=y",) and s.requires.arch == ("x86_64", "riscv64")
    checks = decide(needs_of(s, 1), "x86_64", KernelFacts(config_file={"CONFIG_KEXEC_FILE": "y"},
                                                         config_file_source="config file c"))
    assert first_unmet(checks).reason == ("requires.config: needs CONFIG_SECURITY_LOCKDOWN_LSM=y, but "
                                          "CONFIG_SECURITY_LOCKDOWN_LSM is not set (config file c)")
    assert first_unmet(decide(needs_of(s, 1), "arm64", KernelFacts())).need.key == "requires.arch"


@pytest.mark.parametrize("text, where", [
    ("requires: {smp: false}\n", "key 'requires.smp': False only `true`"),
    ("requires:\n  config: [SMP=y]\n", "key 'requires.config.0': 'SMP=y' is not of the form"),
    ("requires:\n  arch: sparc\n", "key 'requires.arch.0': 'sparc' is not one of"),
    ("requires:\n  method: kexec_load\n", "key 'requires.method': unknown key"),
    ("requires:\n  load_method: kexec\n", "key 'requires.load_method': 'kexec' is not one of"),
])
def test_requires_errors_name_file_line_and_key(tmp_path, text, where):
    path = tmp_path / "bad.yaml"
    path.write_text("description: x\n" + text + "expect: capture-booted\n")
    with pytest.raises(ConfigError) as exc:
        load_scenario(path)
    assert str(exc.value).startswith(f"{path}:") and where in str(exc.value)
    assert str(exc.value).split(":")[1] in ("2", "3")  # the line of the key at fault


ONE_CPU = {"cpus_online": "0", "cpus_possible": "0"}
TWO_CPUS = {"cpus_online": "0-1", "cpus_possible": "0-1"}


def test_a_met_requirement_the_running_kernel_contradicts_is_a_failure():
    """The config file says SMP; the booted kernel brought up one CPU of two: FAIL, with both."""
    said = KernelFacts(config_file={"CONFIG_SMP": "y", "CONFIG_KEXEC_FILE": "y"},
                       config_file_source="config file lying/config")
    with pytest.raises(RequirementUnmet) as exc:
        after_boot(needs("crash-intact-cpu1"), "x86_64", said, ONE_CPU, 2, 2)
    assert "machine.smp: needs 2 CPUs (CONFIG_SMP=y)" in str(exc.value)
    assert "only CPU(s) '0' of the 2" in str(exc.value)
    assert "though the kernel's config file said CONFIG_SMP=y (config file lying/config)" in str(exc.value)
    assert [(c.need.key, c.state) for c in exc.value.checks] == [("load.method", MET), ("machine.smp", UNMET)]
    assert {c["state"] for c in [c.to_json() for c in after_boot(needs("crash-intact-cpu1"), "x86_64", said,
                                                                  TWO_CPUS, 2, 2)]} == {MET}


def test_a_requirement_only_the_booted_kernel_can_tell_skips_there():
    with pytest.raises(NotApplicable) as exc:
        after_boot(needs("crash-intact-cpu1"), "x86_64", KernelFacts(), ONE_CPU, 2, 2)
    assert exc.value.check.need.key == "machine.smp"


def test_a_config_requirement_is_confirmed_by_the_running_kernel(tmp_path):
    path = tmp_path / "needs-hotplug.yaml"
    path.write_text("requires: {config: [CONFIG_CRASH_HOTPLUG=y]}\nexpect: capture-booted\n")
    s = load_scenario(path)
    facts = KernelFacts(config_file={"CONFIG_CRASH_HOTPLUG": "y", "CONFIG_KEXEC_FILE": "y"},
                        config_file_source="config file c",
                        running={"CONFIG_CRASH_HOTPLUG": Fact("n", "running kernel: sysfs")})
    with pytest.raises(RequirementUnmet, match=r"CONFIG_CRASH_HOTPLUG is not set \(running kernel: sysfs\), "
                                               r"though the kernel's config file said CONFIG_CRASH_HOTPLUG=y"):
        after_boot(needs_of(s, 1), "x86_64", facts, ONE_CPU, 1, 1)


def test_cpus_lab_yaml_asks_for_still_stop_a_kernel_that_lacks_them():
    """machine.smp from lab.yaml names no scenario need: the old configuration-class result."""
    with pytest.raises(ConfigError, match="does not apply to this kernel") as exc:
        after_boot(needs("crash-intact"), "x86_64", KernelFacts(), ONE_CPU, 2, 2)
    assert not isinstance(exc.value, (NotApplicable, RequirementUnmet))


def test_lab_catalogue_kernels_are_all_recorded():
    """Every catalogue kernel has a recorded config excerpt or recipe config, so the decision
    table is the whole catalogue's."""
    assert set(load_lab(ROOT / "lab.yaml").kernels) <= set(kernel_configs())


def test_a_skip_is_written_before_any_guest_and_an_applicable_pair_leaves_no_trace(tmp_path):
    """What `labctl matrix` does instead of starting a child: a skipped pair's directory holds
    its result.json only; a pair that may apply gets no directory (its child makes it)."""
    lab = LabConfig(path=ROOT / "lab.yaml", accel="tcg", machine=MachineConfig(), timeouts=Timeouts(),
                    artifacts_dir=tmp_path, cache_dir=tmp_path / "cache", default_kernel="tiny")
    tiny = Kernel(name="tiny", bzimage=tmp_path / "bzImage", release="6.12",
                  config=RECORDED / "tiny-6.12-serial.config")
    result = skipped_result(lab, tiny, scenario("crash-intact-cpu1"), "run1")
    assert result is not None and result.exit_code == 0
    assert sorted(p.name for p in (tmp_path / "run1" / "tiny" / "crash-intact-cpu1").iterdir()) == ["result.json"]
    assert result.reason.startswith("does not apply: machine.smp: needs 2 CPUs")
    assert [r["state"] for r in result.evidence["requirements"]] == [MET, UNMET]
    assert skipped_result(lab, tiny, scenario("crash-intact"), "run1") is None
    assert not (tmp_path / "run1" / "tiny" / "crash-intact").exists()
