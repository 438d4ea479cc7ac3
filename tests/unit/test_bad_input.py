"""Bad input through the real CLI: exit 2, the file and key named, and nothing started.

Each case runs `labctl run` in-process against a lab in a temporary directory
and checks what it left: no run directory, no artifacts, no child process.
A property-based test then throws generated documents at the scenario schema.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from labctl import cli, stopping
from labctl.config.cause_names import CAUSES
from labctl.config.schema import (
    ERRNO_NAMES,
    KERNEL_IMAGES,
    LOAD_METHODS,
    OUTCOMES,
    PATTERNS,
    PLACEMENTS,
    SEGMENT_ROLES,
    TRIGGERS,
    load_scenario,
)
from labctl.errors import ConfigError

LAB = """\
default_kernel: k
artifacts_dir: artifacts
kernels:
  k: {path: bzImage}
  gone: {path: no/such/bzImage}
"""
GOOD = "expect: capture-booted\n"


@pytest.fixture
def lab(tmp_path):
    """A lab whose kernel file exists (its content never matters: nothing may boot)."""
    (tmp_path / "lab.yaml").write_text(LAB)
    (tmp_path / "bzImage").write_bytes(b"not booted")
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "good.yaml").write_text(GOOD)
    return tmp_path


def children() -> set[int]:
    """Processes whose parent is this one (a started QEMU would be one)."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            found.add(int(pid))
    return found


def run_cli(lab: Path, *argv: str, capsys) -> tuple[int, str]:
    """`labctl --lab LAB run ...` in this process: (exit code, stderr).  The signal
    handlers labctl installs are put back, so pytest keeps its own Ctrl-C."""
    handlers = {sig: signal.getsignal(sig) for sig in stopping.STOP_SIGNALS}
    try:
        code = cli.main(["--lab", str(lab / "lab.yaml"), "run", *argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return code, capsys.readouterr().err


# (what is wrong, file name -> content, extra argv, scenario argument, what stderr must say)
# "{lab}" in the expected text is the lab directory.
CASES = [
    ("malformed YAML", {"s.yaml": "expect: [capture-booted\n"}, (), "{lab}/s.yaml",
     "{lab}/s.yaml:2: invalid YAML"),
    ("unknown key", {"s.yaml": GOOD + "colour: red\n"}, (), "{lab}/s.yaml",
     "{lab}/s.yaml:2: key 'colour': unknown key"),
    ("unknown nested key", {"s.yaml": GOOD + "corrupt:\n  segment: kernel\n  lenght: 4\n"}, (),
     "{lab}/s.yaml", "{lab}/s.yaml:4: key 'corrupt.lenght': unknown key"),
    ("wrong type", {"s.yaml": GOOD + "corrupt:\n  segment: kernel\n  length: many\n"}, (),
     "{lab}/s.yaml", "{lab}/s.yaml:4: key 'corrupt.length': must be an integer"),
    ("bool for an int", {"s.yaml": GOOD + "corrupt: {segment: kernel, offset: true}\n"}, (),
     "{lab}/s.yaml", "{lab}/s.yaml:2: key 'corrupt.offset': must be an integer or a string"),
    ("unknown segment role", {"s.yaml": GOOD + "corrupt: {segment: bootloader}\n"}, (),
     "{lab}/s.yaml", "{lab}/s.yaml:2: key 'corrupt.segment': 'bootloader' is not one of"),
    ("negative offset", {"s.yaml": GOOD + "corrupt: {segment: kernel, offset: -1}\n"}, (),
     "{lab}/s.yaml", "{lab}/s.yaml:2: key 'corrupt.offset': -1 must be 0 or more"),
    ("zero length", {"s.yaml": GOOD + "corrupt: {segment: kernel, length: 0}\n"}, (),
     "{lab}/s.yaml", "{lab}/s.yaml:2: key 'corrupt.length': 0 must be greater than 0"),
    ("unknown placement", {"s.yaml": GOOD + "corrupt: {segment: kernel, offset: beyond}\n"}, (),
     "{lab}/s.yaml", "{lab}/s.yaml:2: key 'corrupt.offset': 'beyond' is not an integer nor one of"),
    ("unknown trigger", {"s.yaml": GOOD + "trigger: reboot\n"}, (), "{lab}/s.yaml",
     "{lab}/s.yaml:2: key 'trigger': 'reboot' is not one of"),
    ("unknown outcome", {"s.yaml": "expect: booted\n"}, (), "{lab}/s.yaml",
     "{lab}/s.yaml:1: key 'expect.outcome': 'booted' is not one of"),
    ("unknown errno", {"s.yaml": "expect: {outcome: load-rejected, errno: EWHAT}\n"}, (),
     "{lab}/s.yaml", "{lab}/s.yaml:1: key 'expect.errno': 'EWHAT' is not one of"),
    ("a list, not a mapping", {"s.yaml": "- expect\n"}, (), "{lab}/s.yaml",
     "{lab}/s.yaml:1: must be a mapping"),
    ("not UTF-8", {"s.yaml": b"expect: \xff\xfe\n"}, (), "{lab}/s.yaml", "{lab}/s.yaml: cannot read"),
    ("YAML tag that would build an object", {"s.yaml": "expect: !!python/object/apply:os.system [id]\n"},
     (), "{lab}/s.yaml", "{lab}/s.yaml:1: invalid YAML"),
    ("unknown accelerator in lab.yaml", {"lab.yaml": "accel: warp\n" + LAB}, (), "good",
     "{lab}/lab.yaml:1: key 'accel': 'warp' is not one of: auto, kvm, tcg"),
    ("unknown accelerator on the command line", {}, ("--accel", "warp"), "good",
     "argument --accel: invalid choice: 'warp'"),
    ("lab.yaml wrong type", {"lab.yaml": LAB + "timeouts: {boot: soon}\n"}, (), "good",
     "{lab}/lab.yaml:6: key 'timeouts.boot': must be an integer or a number"),
    ("unknown kernel name", {}, ("--kernel", "no-such-kernel"), "good",
     "unknown kernel 'no-such-kernel': not in the catalogue of {lab}/lab.yaml"),
    ("missing kernel path", {}, ("--kernel", "{lab}/nowhere/bzImage"), "good",
     "kernel image not found: {lab}/nowhere/bzImage"),
    ("catalogue entry whose path is missing", {}, ("--kernel", "gone"), "good",
     "{lab}/lab.yaml:5: key 'kernels.gone.path': kernel image not found"),
    ("scenario name with '..'", {}, (), "../scenarios/good", "bad scenario name '../scenarios/good'"),
    ("scenario path to a non-YAML file", {}, (), "/etc/passwd", "bad scenario name '/etc/passwd'"),
    ("scenario name with shell characters", {}, (), "good;reboot", "bad scenario name 'good;reboot'"),
    ("scenario name starting with a dot", {}, (), ".good", "bad scenario name '.good'"),
    ("unknown scenario name", {}, (), "nope", "unknown scenario 'nope'; known: good"),
    ("bad run id", {}, ("--run-id", "../escape"), "good", "argument --run-id"),
]


@pytest.mark.parametrize("why,files,extra,scenario,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_naming_file_and_key_with_nothing_started(lab, capsys, why, files, extra,
                                                                     scenario, message):
    for name, content in files.items():
        (lab / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    children_before = children()
    code, err = run_cli(lab, scenario.format(lab=lab), *(a.format(lab=lab) for a in extra), capsys=capsys)
    assert code == 2, err
    assert message.format(lab=lab) in err, err
    assert not (lab / "artifacts").exists() or not any((lab / "artifacts").iterdir())
    assert children() <= children_before  # no QEMU (nor anything else) was started


# ------------------------------------------------------------ the schema, by property

def leaf(values) -> st.SearchStrategy:
    return st.sampled_from(values)


TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)
CORRUPT = st.fixed_dictionaries({"segment": leaf(SEGMENT_ROLES)}, optional={
    "offset": st.one_of(leaf(PLACEMENTS), st.integers(0, 2 ** 40)),
    "length": st.integers(1, 2 ** 20), "pattern": leaf(PATTERNS), "seed": st.integers()})
PLAIN_OUTCOMES = tuple(o for o in OUTCOMES if o not in CAUSES)  # a failure outcome names a cause


def with_cause(entry: dict) -> dict:
    """A failure outcome's expectation with a cause it can have (config/cause_names.py)."""
    return {**entry, "cause": CAUSES[entry["outcome"]][0]} if entry["outcome"] in CAUSES else entry


CASE = st.one_of(st.fixed_dictionaries({"kernel": TEXT, "outcome": leaf(OUTCOMES), "reason": TEXT}),
                 st.fixed_dictionaries({"config": st.from_regex(r"CONFIG_[A-Z0-9_]{1,12}=[ymn]", fullmatch=True),
                                        "outcome": leaf(OUTCOMES), "reason": TEXT}),
                 st.fixed_dictionaries({"lab_key": st.booleans(), "outcome": leaf(OUTCOMES),
                                        "reason": TEXT}))
BOOT_WORDS = st.lists(st.from_regex(r"[a-z][a-z0-9_.]{0,10}(=[a-z0-9,]{1,8})?", fullmatch=True)
                      .filter(lambda w: w.split("=")[0] not in ("console", "crashkernel", "panic",
                                                                "earlyprintk")), max_size=4)
EXPECT = st.one_of(leaf(PLAIN_OUTCOMES), st.fixed_dictionaries({"outcome": leaf(OUTCOMES)}, optional={
    "errno": leaf(ERRNO_NAMES), "reason": TEXT, "when": st.lists(CASE.map(with_cause), max_size=2)}
).map(with_cause))
SCENARIO = st.fixed_dictionaries({"expect": EXPECT}, optional={
    "description": TEXT, "boot": st.fixed_dictionaries({}, optional={
        "crashkernel": st.booleans(), "cmdline": BOOT_WORDS.map(" ".join)}),
    "load": st.fixed_dictionaries({}, optional={
        "method": leaf(LOAD_METHODS), "kernel": leaf(KERNEL_IMAGES), "cmdline": TEXT,
        "cmdline_length": st.integers(1, 4000), "unload": st.booleans(), "crash": st.booleans(),
        "kernel_from": leaf(["debian-6.1", "tiny-6.12-serial"])}),
    "corrupt": CORRUPT, "trigger": leaf(TRIGGERS), "then_intact": st.booleans()})


def outcome_of(doc: dict) -> str:
    return doc["expect"] if isinstance(doc["expect"], str) else doc["expect"]["outcome"]


RULE_KEYS = ("trigger", "then_intact", "corrupt.segment", "load.crash", "load.kernel_from",
             "load.unload", "load.kernel")


def breaks_a_rule(doc: dict) -> str | None:
    """The key a cross-key rule of the schema names for this document, if one applies."""
    if "corrupt" in doc and doc.get("trigger") == "none":
        return "trigger"
    if doc.get("then_intact") and outcome_of(doc) not in ("load-rejected", "load-accepted"):
        return "then_intact"
    if doc.get("corrupt", {}).get("segment") == "backup" and \
            doc.get("load", {}).get("method", "kexec_file_load") != "kexec_load":
        return "corrupt.segment"
    return breaks_a_reboot_rule(doc)


def breaks_a_reboot_rule(doc: dict) -> str | None:
    """The kexec reboot and kernel_from rules (schema._check_reboot), in its order."""
    load, reboot = doc.get("load", {}), doc.get("trigger") == "kexec-reboot"
    if reboot == load.get("crash", True):
        return "load.crash"
    if "kernel_from" in load and load.get("kernel", "default") != "default":
        return "load.kernel_from"
    if not reboot:
        return None
    if doc.get("then_intact"):
        return "then_intact"
    if load.get("unload"):
        return "load.unload"
    if load.get("kernel", "default") != "default":
        return "load.kernel"
    if doc.get("corrupt", {}).get("segment", "kernel") not in ("kernel", "initrd"):
        return "corrupt.segment"
    return None


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(doc=SCENARIO)
def test_every_valid_scenario_loads_as_written(tmp_path, doc):
    """Valid documents load with every value kept; those a cross-key rule forbids name the key."""
    path = tmp_path / "generated.yaml"
    path.write_text(yaml.safe_dump(doc))
    rule = breaks_a_rule(doc)
    if rule:
        with pytest.raises(ConfigError, match=f"^{path}:\\d+: key '{rule}'"):
            load_scenario(path)
        return
    scenario = load_scenario(path)
    assert scenario.expect.outcome == outcome_of(doc)
    assert scenario.trigger == doc.get("trigger", "sysrq")
    for key, value in doc.get("load", {}).items():
        assert getattr(scenario.load, key) == value
    for key, value in doc.get("corrupt", {}).items():
        assert getattr(scenario.corrupt, key) == value
    assert (scenario.corrupt is None) == ("corrupt" not in doc)
    assert scenario.boot_cmdline == doc.get("boot", {}).get("cmdline", "")
    if isinstance(doc["expect"], dict):
        assert len(scenario.expect.cases) == len(doc["expect"].get("when", []))


def paths_to_leaves(doc, prefix=()):
    """Every (key path) of a document's scalar values."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from paths_to_leaves(value, prefix + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from paths_to_leaves(value, prefix + (i,))
    else:
        yield prefix


WRONG = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2),
                  st.dictionaries(st.just("x"), st.integers(), max_size=1), st.text(max_size=8))


@SETTINGS
@given(doc=SCENARIO, data=st.data())
def test_one_bad_value_is_an_error_naming_its_key(tmp_path, doc, data):
    """Replace one value with something of another kind: a ConfigError (never a crash)
    whose file:line: points at that key, or, if the schema allows it, a loaded scenario."""
    assume(breaks_a_rule(doc) is None)
    leaves = [p for p in paths_to_leaves(doc) if p and not isinstance(p[-1], int)]
    keypath = data.draw(st.sampled_from(leaves))
    bad = data.draw(WRONG)
    target = doc
    for key in keypath[:-1]:
        target = target[key]
    target[keypath[-1]] = bad
    path = tmp_path / "mutated.yaml"
    text = yaml.safe_dump(doc)
    path.write_text(text)
    try:
        load_scenario(path)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}:") and exc.exit_code == 2, str(exc)
        named = re.search(r"key '([^']*)'", str(exc)).group(1)
        dotted = ".".join(map(str, keypath))
        assert dotted.startswith(named) or named.startswith(dotted) or named in RULE_KEYS, str(exc)


@SETTINGS
@given(doc=SCENARIO, key=st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=10))
def test_an_unknown_key_is_named_with_its_line(tmp_path, doc, key):
    assume(key not in doc)
    doc[key] = 1
    path = tmp_path / "unknown.yaml"
    text = yaml.safe_dump(doc)
    path.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1)
                if row.split(":")[0].strip("'\"") == key)
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert str(err.value).startswith(f"{path}:{line}: key '{key}': unknown key"), str(err.value)
