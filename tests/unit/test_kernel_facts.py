"""Kernel options learned from the running kernel (recorded hellos), never guessed."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from recorded import DATA, message

from labctl.config.schema import load_scenario
from labctl.kernel.facts import (
    KernelFacts,
    UnknownFact,
    from_config_gz,
    from_sysfs,
    needed_symbols,
    parse_config,
    resolve,
)

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
HELLOS = {"debian-6.12": ("debian-6.12", "y"), "debian-6.1": ("debian-6.1", "n"),
          "tiny-6.12-serial": ("recipes/tiny-6.12-serial", "n")}


def sysfs(kernel: str) -> dict:
    return message(HELLOS[kernel][0], "crash-intact-dump-check", "hello", role="primary")["sysfs"]


@pytest.mark.parametrize("kernel", HELLOS)
def test_crash_hotplug_is_read_from_the_running_kernel(kernel):
    fact = from_sysfs(sysfs(kernel))["CONFIG_CRASH_HOTPLUG"]
    assert fact.value == HELLOS[kernel][1]
    assert fact.source.startswith("running kernel: /sys/kernel/") and "kernel/ksysfs.c" in fact.source


def test_a_kernel_without_the_telling_files_tells_nothing():
    assert from_sysfs({"present": True, "vmcoreinfo": None, "crash_elfcorehdr_size": None,
                       "crash_hotplug": None}) == {}
    assert from_sysfs(None) == {}


def test_config_gz_wins_and_a_config_file_is_the_last_resort():
    facts = KernelFacts(config_file={"CONFIG_CRASH_HOTPLUG": "y"}, config_file_source="config file X")
    assert facts.fact("CONFIG_CRASH_HOTPLUG").source == "config file X"
    assert facts.fact("CONFIG_OTHER").value == "n"  # a whole .config: absent means not set
    facts.running = from_sysfs(sysfs("debian-6.1"))
    assert facts.fact("CONFIG_CRASH_HOTPLUG").value == "n"
    assert facts.to_json(["CONFIG_CRASH_HOTPLUG"])["CONFIG_CRASH_HOTPLUG"]["config_file"] == "y (disagrees)"
    facts.config_gz = from_config_gz(gzip.compress(b"CONFIG_CRASH_HOTPLUG=y\n").hex())
    assert facts.fact("CONFIG_CRASH_HOTPLUG") .to_json() == {
        "value": "y", "source": "running kernel: /proc/config.gz"}
    assert from_config_gz("not hex") is None and from_config_gz(b"not gzip".hex()) is None


def test_lockdown_lsm_is_read_from_securityfs():
    base = {"present": True, "vmcoreinfo": "0x1 1024", "crash_elfcorehdr_size": None}
    built = from_sysfs({**base, "securityfs": True, "lockdown": "[none] integrity confidentiality"})
    assert built["CONFIG_SECURITY_LOCKDOWN_LSM"].value == "y"
    assert from_sysfs({**base, "securityfs": True, "lockdown": None})[
        "CONFIG_SECURITY_LOCKDOWN_LSM"].value == "n"
    assert "CONFIG_SECURITY_LOCKDOWN_LSM" not in from_sysfs({**base, "securityfs": False, "lockdown": None})


@pytest.mark.parametrize("name", sorted(p.stem for p in SCENARIOS.glob("*.yaml")))
@pytest.mark.parametrize("kernel", HELLOS)
def test_a_bare_image_resolves_every_scenario_as_its_config_file_does(name, kernel):
    """A bzImage passed by path with nothing beside it: the running kernel's facts give the
    same expectation as the catalogue entry's config file, or say it is unknown (these
    recorded hellos predate the securityfs probe), never another answer."""
    scenario = load_scenario(SCENARIOS / f"{name}.yaml")
    file_facts = {"CONFIG_CRASH_HOTPLUG": HELLOS[kernel][1], "CONFIG_SECURITY_LOCKDOWN_LSM": "y"}
    if kernel.startswith("tiny"):
        file_facts = parse_config((DATA / "recipes" / "tiny-6.12" / "config").read_text())
    found = {"lab_key": False}  # what signing.trusted_lab_keys finds in these images
    catalogue = resolve(scenario.expect, kernel, KernelFacts(config_file=file_facts), found)
    running = from_sysfs(sysfs(kernel))
    if set(needed_symbols(scenario.expect)) - set(running):
        with pytest.raises(UnknownFact):
            resolve(scenario.expect, kernel, KernelFacts(running=running), found)
        return
    assert resolve(scenario.expect, kernel, KernelFacts(running=running), found) == catalogue


def test_an_unknown_lab_key_is_unknown_not_the_default():
    """A `lab_key:` case the lab could not decide (the image was unreadable) makes the
    expectation unknown, where it used to fall through to the scenario's default."""
    scenario = load_scenario(SCENARIOS / "lockdown-signed-intact.yaml")
    facts = KernelFacts(config_file={"CONFIG_SECURITY_LOCKDOWN_LSM": "y"})
    for found in ({"lab_key": None}, {}, None):
        with pytest.raises(UnknownFact, match="depends on lab_key"):
            resolve(scenario.expect, "bzImage", facts, found)
    assert resolve(scenario.expect, "bzImage", facts, {"lab_key": False}).outcome == "load-rejected"
    assert resolve(scenario.expect, "bzImage", facts, {"lab_key": True}).outcome == "capture-booted"


def test_an_expectation_on_an_unknown_option_is_not_guessed():
    scenario = load_scenario(SCENARIOS / "corrupt-elfcorehdr.yaml")
    assert needed_symbols(scenario.expect) == ["CONFIG_CRASH_HOTPLUG"]
    with pytest.raises(UnknownFact, match="expectation unknown: depends on CONFIG_CRASH_HOTPLUG, "
                                          "not known for this kernel"):
        resolve(scenario.expect, "bzImage", KernelFacts(running={}))
    plain = load_scenario(SCENARIOS / "crash-intact.yaml")
    assert resolve(plain.expect, "bzImage", KernelFacts()).outcome == "capture-booted"


@pytest.mark.parametrize("answer,value", [(True, "y"), (False, "n")])
def test_kexec_file_is_read_from_the_syscalls_answer(answer, value):
    """The helper calls kexec_file_load(2) with flags no kernel accepts: ENOSYS means the
    syscall is not built (a hello without the probe, as older recordings, tells nothing)."""
    fact = from_sysfs({"present": True, "kexec_file_load": answer})["CONFIG_KEXEC_FILE"]
    assert fact.value == value and fact.source.startswith("running kernel: kexec_file_load(2)")
    assert "CONFIG_KEXEC_FILE" not in from_sysfs({"present": True, "lockdown": None})
