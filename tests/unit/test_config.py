"""lab.yaml and scenario validation: good files load, bad ones name the file, line and key."""

from pathlib import Path

import pytest

from labctl.config.schema import find_scenario, load_lab, load_scenario
from labctl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

LAB_OK = """\
default_kernel: k
kernels:
  k: {path: bzImage}
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_lab_and_scenarios_load():
    lab = load_lab(ROOT / "lab.yaml")
    assert lab.default_kernel == "debian-6.12"
    assert lab.kernels["debian-6.12"].debian_package == "linux-image-6.12-cloud-amd64"
    assert lab.kernels["debian-6.1"].debian_package == "linux-image-cloud-amd64"
    assert lab.accel == "auto" and lab.machine.crashkernel_mib == 256
    corrupt = load_scenario(ROOT / "scenarios" / "crash-corrupt.yaml")
    assert corrupt.expect.outcome == "purgatory-refused" and corrupt.corrupt.segment == "kernel"
    intact = load_scenario(ROOT / "scenarios" / "crash-intact.yaml")
    assert intact.expect.outcome == "capture-booted" and intact.corrupt is None


def test_defaults_and_relative_paths(tmp_path):
    lab = load_lab(write(tmp_path, "lab.yaml", LAB_OK))
    assert lab.artifacts_dir == tmp_path / "artifacts"
    assert lab.timeouts.boot == 90 and lab.machine.memory_mib == 1024


BAD_LABS = [
    ("accel: fast\n" + LAB_OK, 1, "key 'accel': 'fast' is not one of: auto, kvm, tcg"),
    (LAB_OK + "colour: blue\n", 4, "key 'colour': unknown key"),
    (LAB_OK + "machine:\n  memory_mib: 8192\n", 5, "must be between 256 and 3072"),
    (LAB_OK + "machine:\n  smp: two\n", 5, "key 'machine.smp': must be an integer"),
    (LAB_OK + "timeouts:\n  boot: -1\n", 5, "must be greater than 0"),
    ("default_kernel: nope\nkernels:\n  k: {path: x}\n", 1, "'nope' is not in 'kernels'"),
    ("default_kernel: k\nkernels:\n  k: {}\n", 3, "exactly one of 'debian_package' or 'path'"),
    ("default_kernel: k\nkernels:\n  k: {path: x, debian_package: y}\n", 3, "exactly one of"),
    ("default_kernel: k\nkernels: [a, b\n", 3, "invalid YAML"),
    ("kernels: {}\n", 1, "key 'default_kernel': is required"),
    ("- just\n- a list\n", 1, "must be a mapping"),
]


def assert_config_error(load, path, line, message):
    """The error names the file and line first, then the key and what is wrong; exit 2."""
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}:{line}: "), str(err.value)
    assert message in str(err.value)
    assert err.value.exit_code == 2


@pytest.mark.parametrize("text,line,message", BAD_LABS)
def test_bad_lab_names_file_line_and_key(tmp_path, text, line, message):
    assert_config_error(load_lab, write(tmp_path, "lab.yaml", text), line, message)


SCENARIO_OK = "expect: capture-booted\n"
BAD_SCENARIOS = [
    ("expect: booted\n", 1, "'booted' is not one of"),
    ("expect: hang\ntrigger: magic\n", 2, "key 'trigger': 'magic' is not one of"),
    ("expect: hang\ncorrupt:\n  segment: bootloader\n", 3, "key 'corrupt.segment': 'bootloader'"),
    ("expect: hang\ncorrupt:\n  segment: kernel\n  offset: somewhere\n", 4, "not an integer nor one of"),
    ("expect: hang\ncorrupt:\n  segment: kernel\n  offset: -4\n", 4, "must be 0 or more"),
    ("expect: hang\ncorrupt:\n  segment: kernel\n  length: 0\n", 4, "must be greater than 0"),
    ("expect: hang\ncorrupt:\n  segment: kernel\n  pattern: smash\n", 4, "key 'corrupt.pattern'"),
    ("expect: hang\ncorrupt:\n  segment: kernel\n  lenght: 4\n", 4, "key 'corrupt.lenght': unknown key"),
    ("expect: hang\nload:\n  method: kexec_magic\n", 3, "key 'load.method'"),
    ("description: x\n", 1, "key 'expect': is required"),
    ("expect: [hang\n", 2, "invalid YAML"),
    ("expect: true\n", 1, "key 'expect': must be a mapping"),
    ("expect: {outcome: load-rejected, errno: EWHAT}\n", 1, "'EWHAT' is not one of"),
    ("expect:\n  outcome: hang\n  when:\n    - {outcome: hang, reason: r}\n", 4,
     "key 'expect.when.0': needs 'kernel', 'config', 'lab_key' or 'arch'"),
    ("expect:\n  outcome: hang\n  when:\n    - {kernel: k, arch: arm64, outcome: hang, reason: r}\n", 4,
     "key 'expect.when.0': 'kernel' names one kernel: it takes no 'arch'"),
    ("expect:\n  outcome: hang\n  when:\n    - {kernel: k, config: CONFIG_X=y, outcome: hang, reason: r}\n", 4,
     "key 'expect.when.0': needs exactly one of 'kernel', 'config' or 'lab_key'"),
    ("expect:\n  outcome: hang\n  when:\n    - {arch: sparc, outcome: hang, reason: r}\n", 4,
     "key 'expect.when.0.arch': 'sparc' is not one of"),
    ("expect:\n  outcome: hang\n  when:\n    - {config: HOTPLUG, outcome: hang, reason: r}\n", 4,
     "is not of the form CONFIG_NAME=value"),
    ("expect: hang\ntrigger: none\ncorrupt: {segment: kernel}\n", 2, "'corrupt' would never be judged"),
    ("expect: hang\nthen_intact: true\n", 2, "only follows a load-rejected"),
    ("expect: hang\ncorrupt: {segment: backup}\n", 2, "only kexec_load"),
    ("expect: hang\nload: {kernel: bogus}\n", 2, "key 'load.kernel': 'bogus' is not one of"),
    ("expect: hang\nboot:\n  cmdline: console=ttyS1\n", 3,
     "key 'boot.cmdline': 'console=ttyS1' sets console=, which the lab sets itself"),
    ("expect: hang\nboot:\n  cmdline: 'lockdown=integrity crashkernel=1G'\n", 3,
     "sets crashkernel=, which the lab sets itself"),
    ("expect: hang\nboot:\n  cmdline: 'init=\"/bin/sh -c x\"'\n", 3,
     "which is not a kernel parameter (word or word=value; no quotes)"),
    ("expect: hang\nboot:\n  cmdline: " + "x" * 600 + "\n", 3, "is longer than 512 characters"),
    ("expect: hang\nboot:\n  cmdline: [lockdown=integrity]\n", 3, "key 'boot.cmdline': must be a string"),
    ("expect:\n  outcome: hang\n  when:\n    - {lab_key: true, config: CONFIG_X=y, outcome: hang, reason: r}\n",
     4, "key 'expect.when.0': needs exactly one of 'kernel', 'config' or 'lab_key'"),
    ("expect:\n  outcome: hang\n  when:\n    - {lab_key: maybe, outcome: hang, reason: r}\n",
     4, "key 'expect.when.0.lab_key': must be true or false"),
    ("expect:\n  outcome: hang\n  when:\n    - lab_key: false\n      outcome: hang\n"
     "      reason: r\n      then_intact: true\n", 7,
     "key 'expect.when.0.then_intact': only follows a load-rejected"),
]


@pytest.mark.parametrize("text,line,message", BAD_SCENARIOS)
def test_bad_scenario_names_file_line_and_key(tmp_path, text, line, message):
    assert_config_error(load_scenario, write(tmp_path, "bad.yaml", text), line, message)


def test_find_scenario_by_name_or_path(tmp_path):
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    write(scenarios, "mine.yaml", SCENARIO_OK)
    elsewhere = write(tmp_path, "other.yaml", SCENARIO_OK)
    assert find_scenario("mine", scenarios) == scenarios / "mine.yaml"
    assert find_scenario(str(elsewhere), scenarios) == elsewhere
    with pytest.raises(ConfigError, match="unknown scenario 'nope'; known: mine"):
        find_scenario("nope", scenarios)
    with pytest.raises(ConfigError, match="bad scenario name"):
        find_scenario("..hidden", scenarios)
    with pytest.raises(ConfigError, match="scenario file not found"):
        find_scenario("../x/missing.yaml", scenarios)


def test_expectation_resolves_per_kernel_and_config(tmp_path):
    path = write(tmp_path, "s.yaml", """\
corrupt: {segment: elfcorehdr}
expect:
  outcome: purgatory-refused
  when:
    - kernel: special
      outcome: hang
      reason: a named kernel
    - config: CONFIG_CRASH_HOTPLUG=y
      outcome: capture-booted
      reason: elfcorehdr is not hashed under CRASH_HOTPLUG
""")
    expect = load_scenario(path).expect
    assert expect.resolve("debian-6.1", {"CONFIG_CRASH_HOTPLUG": "n"}).outcome == "purgatory-refused"
    assert expect.resolve("debian-6.1", {}).outcome == "purgatory-refused"
    hotplug = expect.resolve("debian-6.12", {"CONFIG_CRASH_HOTPLUG": "y"})
    assert (hotplug.outcome, hotplug.reason) == ("capture-booted", "elfcorehdr is not hashed under CRASH_HOTPLUG")
    assert expect.resolve("special", {"CONFIG_CRASH_HOTPLUG": "y"}).outcome == "hang"


def test_boot_cmdline_and_lab_key_cases(tmp_path):
    """boot.cmdline words reach the scenario; lab_key cases match on what the lab found
    in the kernel, never on a missing fact; a case can say no follow-up load can work."""
    scenario = load_scenario(write(tmp_path, "s.yaml", """\
boot: {cmdline: "  lockdown=integrity   module.sig_enforce=1 "}
load: {kernel: wrong-key}
trigger: none
then_intact: true
expect:
  outcome: load-rejected
  errno: EPERM
  when:
    - config: CONFIG_SECURITY_LOCKDOWN_LSM=n
      outcome: load-accepted
      reason: no lockdown here
    - lab_key: false
      outcome: load-rejected
      errno: EPERM
      then_intact: false
      reason: nothing verifies on this kernel
"""))
    assert scenario.boot_cmdline == "lockdown=integrity module.sig_enforce=1"
    assert scenario.load.kernel == "wrong-key" and scenario.then_intact
    lockdown = {"CONFIG_SECURITY_LOCKDOWN_LSM": "y"}
    debian = scenario.expect.resolve("debian-6.12", lockdown, {"lab_key": False})
    assert (debian.outcome, debian.errno, debian.then_intact) == ("load-rejected", "EPERM", False)
    sig = scenario.expect.resolve("tiny-6.12-sig", lockdown, {"lab_key": True})
    assert (sig.outcome, sig.errno, sig.then_intact) == ("load-rejected", "EPERM", None)
    unknown = scenario.expect.resolve("mine", lockdown, {"lab_key": None})
    assert unknown.then_intact is None  # an unknown fact matches no lab_key case
    assert scenario.expect.resolve("tiny", {}, {"lab_key": False}).outcome == "load-accepted"
    assert load_scenario(write(tmp_path, "plain.yaml", SCENARIO_OK)).boot_cmdline == ""


def test_every_shipped_scenario_is_valid():
    names = [p.stem for p in (ROOT / "scenarios").glob("*.yaml")]
    assert {"crash-intact", "crash-corrupt"} <= set(names)
    for name in names:
        scenario = load_scenario(ROOT / "scenarios" / f"{name}.yaml")
        assert scenario.description, name


def test_expectation_resolves_per_architecture(tmp_path):
    """`arch:` alone or beside `config:` (both must hold); first match wins."""
    path = write(tmp_path, "s.yaml", """\
corrupt: {segment: kernel}
expect:
  outcome: purgatory-refused
  when:
    - arch: arm64
      config: CONFIG_KEXEC_FILE=y
      outcome: capture-panicked
      cause: oops
      reason: arm64 has no purgatory
    - arch: riscv64
      outcome: hang
      reason: riscv64 answer
""")
    expect = load_scenario(path).expect
    assert expect.resolve("k", {"CONFIG_KEXEC_FILE": "y"}).outcome == "purgatory-refused"
    arm = expect.resolve("k", {"CONFIG_KEXEC_FILE": "y"}, arch="arm64")
    assert (arm.outcome, arm.reason) == ("capture-panicked", "arm64 has no purgatory")
    assert expect.resolve("k", {}, arch="arm64").outcome == "purgatory-refused"  # config does not hold
    assert expect.resolve("k", {}, arch="riscv64").outcome == "hang"
