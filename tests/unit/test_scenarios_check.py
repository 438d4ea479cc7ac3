"""`labctl scenarios check` validates scenario files without booting and says what each
would expect per catalogue kernel; `labctl scenarios --markdown` is the table the docs
include (report/scenarios.py)."""

from pathlib import Path

import pytest

from labctl.cli import main
from labctl.config.schema import load_lab, load_scenario
from labctl.kernel.facts import KernelFacts, UnknownFact
from labctl.report.scenarios import KnownKernel, expected_on

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "scenarios").glob("*.yaml"))


def test_every_shipped_scenario_checks_and_gets_a_line_per_catalogue_kernel(capsys):
    assert main(["scenarios", "check", *map(str, SHIPPED)]) == 0
    out = capsys.readouterr().out
    kernels = load_lab(REPO / "lab.yaml").kernels
    for path in SHIPPED:
        assert f"{path}: ok; expected per catalogue kernel:" in out
    body = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert len(body) == len(SHIPPED) * len(kernels)
    assert {words[0] for words in body} == set(kernels)
    assert all(words[1] in OUTCOMES or words[1] == "unknown:" for words in body)


OUTCOMES = {"capture-booted", "purgatory-refused", "load-rejected", "load-accepted", "panic-halted",
            "dump-mismatch", "capture-halted", "capture-damaged", "capture-panicked", "guest-reset", "hang"}

BROKEN = [
    ("description: x\ncorrupt:\n  sgment: kernel\n", 3, "key 'corrupt.sgment': unknown key"),
    ("description: x\nexpect:\n  outcome: purgatory-refusd\n", 3, "key 'expect.outcome'"),
    ("description: x\nexpect: capture-booted\nmachine: {smp: 1}\ntrigger: {kind: sysrq, cpu: 3}\n", 4,
     "key 'trigger.cpu'"),
    ("description: x\ncorrupt: {segment: kernel, length: zero}\n", 2, "key 'corrupt.length'"),
]


@pytest.mark.parametrize(("text", "line", "key"), BROKEN, ids=[b[2] for b in BROKEN])
def test_a_broken_scenario_exits_2_naming_file_line_and_key(tmp_path, capsys, text, line, key):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert main(["scenarios", "check", str(REPO / "scenarios" / "crash-intact.yaml"), str(bad)]) == 2
    captured = capsys.readouterr()
    assert f"{bad}:{line}: {key}" in captured.err
    assert "crash-intact.yaml: ok" in captured.out  # the good file is still checked
    assert f"{bad}: ok" not in captured.out


def test_a_missing_file_is_a_usage_error(tmp_path, capsys):
    assert main(["scenarios", "check", str(tmp_path / "nope.yaml")]) == 2
    assert f"{tmp_path / 'nope.yaml'}: no such scenario file" in capsys.readouterr().err


def kernel(config: dict | None, found: dict | None = None, arch: str = "x86_64") -> KnownKernel:
    facts = KernelFacts(config_file=config, config_file_source="config file test") if config is not None \
        else KernelFacts()
    return KnownKernel("k", arch, facts, found, "", {})


def test_expectations_resolve_from_the_config_file_as_a_run_would():
    expect = load_scenario(REPO / "scenarios" / "corrupt-elfcorehdr.yaml").expect
    assert expected_on(expect, kernel({"CONFIG_CRASH_HOTPLUG": "y"})).outcome == "capture-booted"
    assert expected_on(expect, kernel({})).outcome == "purgatory-refused"  # a config file without it: n
    with pytest.raises(UnknownFact, match="CONFIG_CRASH_HOTPLUG"):
        expected_on(expect, kernel(None))  # no config file: never guessed


def test_the_lab_key_is_unknown_until_the_image_was_looked_at():
    expect = load_scenario(REPO / "scenarios" / "lockdown-own-vmlinuz.yaml").expect
    locked = {"CONFIG_SECURITY_LOCKDOWN_LSM": "y"}
    with pytest.raises(UnknownFact, match="lab_key"):
        expected_on(expect, kernel(locked, found=None))
    assert expected_on(expect, kernel(locked, {"lab_key": False})).errno == "EPERM"
    assert expected_on(expect, kernel(locked, {"lab_key": True})).outcome == "capture-booted"
    # no lockdown LSM: the answer does not depend on the key, so it is known without it
    assert expected_on(expect, kernel({}, found=None)).outcome == "capture-booted"


def test_a_kernel_not_fetched_yet_is_unknown_where_it_matters(tmp_path, capsys):
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "bzImage").write_bytes(b"not a kernel")
    (tmp_path / "k" / "config").write_text("CONFIG_CRASH_HOTPLUG=y\n")
    lab = tmp_path / "lab.yaml"
    lab.write_text(f"cache_dir: {tmp_path / 'cache'}\ndefault_kernel: here\nkernels:\n"
                   f"  here: {{path: k/bzImage}}\n  gone: {{path: missing/bzImage}}\n")
    files = [str(REPO / "scenarios" / n) for n in ("corrupt-elfcorehdr.yaml", "crash-corrupt.yaml")]
    assert main(["scenarios", "check", "--lab", str(lab), *files]) == 0
    out = capsys.readouterr().out.split("crash-corrupt.yaml: ok")
    assert "  here  capture-booted" in out[0]
    assert "  gone  unknown: depends on CONFIG_CRASH_HOTPLUG; not downloaded or built yet" in out[0]
    assert "  gone  purgatory-refused" in out[1]  # depends on no option: known anyway


def test_markdown_lists_every_scenario_with_its_cases(capsys):
    assert main(["scenarios", "--markdown"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == sorted(p.stem for p in SHIPPED)
    elfcorehdr = next(r for r in rows if r.startswith("| `corrupt-elfcorehdr` "))
    assert elfcorehdr.endswith("| purgatory-refused; CONFIG_CRASH_HOTPLUG=y: capture-booted |")
