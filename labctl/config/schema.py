"""Load and validate lab.yaml and scenario files into frozen objects.

Every error names the file, the line and the key, and says what would be
accepted, so a typo in a nightly job's scenario is fixed in one read.
YAML is read with yaml.safe_load; line numbers come from yaml.compose over the
same text, never from evaluating anything.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from labctl.config.arch import ARCHES
from labctl.config.cause_names import CAUSES
from labctl.config.requirements import Requires, requires_schema
from labctl.errors import ConfigError
from labctl.result import VERDICTS, Outcome

ACCELERATORS = ("auto", "kvm", "tcg")
ARCH_NAMES = tuple(ARCHES)
# no_timer_check: under TCG on a loaded host the IO-APIC timer check can fail and panic
# a kernel that is fine ("IO-APIC + timer doesn't work!"); it is a VM, not a bad board.
DEFAULT_CMDLINE = "no_timer_check"
DEFAULT_CAPTURE_CMDLINE = "irqpoll nr_cpus=1 reset_devices no_timer_check"
OUTCOMES = tuple(o.value for o in VERDICTS)
CAUSE_NAMES = tuple(sorted({c for names in CAUSES.values() for c in names}))
# backup: the copy of the first 640 KiB that kexec-tools (kexec_load) adds;
# dtb: the device tree arm64 and riscv64 hand the capture kernel (x86_64: boot_params)
SEGMENT_ROLES = ("elfcorehdr", "purgatory", "boot_params", "kernel", "initrd", "backup", "dtb")
PATTERNS = ("flip", "zero", "random", "bit")
# start/middle/end of the data (bufsz), tail = first byte past bufsz (zero-filled up to
# memsz), page = the page-aligned start of the page holding the middle
PLACEMENTS = ("start", "middle", "end", "tail", "page")
# none = stop after the load (for scenarios about what the syscall accepts);
# kexec-reboot = reboot(LINUX_REBOOT_CMD_KEXEC) into a kernel loaded without the crash flag
TRIGGERS = ("sysrq", "nmi", "init-exit", "none", "kexec-reboot")
LOAD_METHODS = ("kexec_file_load", "kexec_load")
KERNEL_IMAGES = ("default", "garbage", "empty", "truncated", "elf-vmlinux",
                 "signed", "unsigned", "wrong-key", "tampered")  # kernel/load_images.py, signing.py
ERRNO_NAMES = tuple(sorted(errno.errorcode.values()))
CONFIG_ASSIGNMENT = re.compile(r"^CONFIG_[A-Z0-9_]+=\S+$")
SCENARIO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# A primary kernel parameter a scenario may add: word or word=value, printable, no quotes.
BOOT_WORD = re.compile(r"^[A-Za-z0-9_.-]+(=[A-Za-z0-9_.,:/+-]+)?$")
BOOT_CMDLINE_MAX = 512
# Parameters the lab sets itself (runner.primary_cmdline): a scenario changing them would
# break the console, the reservation or the verdict evidence (panic=0 keeps a refusal visible).
LAB_OWNED_PARAMS = ("console", "crashkernel", "panic", "earlyprintk")

REQUIRED = object()


@dataclass(frozen=True)
class Field:
    """One key of a mapping: accepted types, default, and an optional check."""

    types: type | tuple[type, ...]
    default: Any = REQUIRED
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None
    schema: dict[str, "Field"] | None = None  # nested mapping
    values: "Field | None" = None  # mapping of free-form names to this
    items: "Field | None" = None  # list of this
    coerce: Callable[[Any], Any] | None = None  # shorthand -> full form, before checks


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


class _Located:
    """Line numbers of keys in a YAML document, by key path."""

    def __init__(self, text: str):
        self.lines: dict[tuple, int] = {}
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            root = None
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, path: tuple) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (key.value,)
                self.lines[sub] = key.start_mark.line + 1
                self._walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, path + (i,))

    def line(self, path: tuple) -> int | None:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path)


def read_yaml(path: Path) -> tuple[Any, _Located]:
    """Parse a YAML file safely; syntax errors become ConfigError with the line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {problem}", str(path),
                          mark.line + 1 if mark else None) from None
    return data, _Located(text)


def _type_name(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {int: "an integer", str: "a string", bool: "true or false",
             dict: "a mapping", float: "a number", list: "a list"}
    return " or ".join(names.get(t, t.__name__) for t in types)


class Validator:
    """Checks a parsed document against a schema of Fields, with locations."""

    def __init__(self, path: Path, located: _Located):
        self.path = str(path)
        self.located = located

    def error(self, keypath: tuple, message: str) -> ConfigError:
        key = ".".join(str(k) for k in keypath)
        prefix = f"key '{key}': " if key else ""
        return ConfigError(prefix + message, self.path, self.located.line(keypath))

    def fail(self, keypath: tuple, message: str) -> None:
        raise self.error(keypath, message)

    def mapping(self, data: Any, schema: dict[str, Field], keypath: tuple = ()) -> dict:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(keypath, f"must be a mapping, got {type(data).__name__}")
        unknown = [k for k in data if k not in schema]
        if unknown:
            self.fail(keypath + (unknown[0],),
                      f"unknown key; known keys here: {', '.join(sorted(schema))}")
        out = {}
        for name, spec in schema.items():
            sub = keypath + (name,)
            if name not in data:
                if spec.default is REQUIRED:
                    self.fail(sub, "is required")
                if spec.schema is not None and spec.default is not None:  # a nested mapping
                    out[name] = self.mapping(spec.default, spec.schema, sub)
                else:
                    out[name] = spec.default
                continue
            out[name] = self.value(data[name], spec, sub)
        return out

    def value(self, value: Any, spec: Field, keypath: tuple) -> Any:
        if value is None and spec.default is None:
            return None
        if spec.coerce is not None:
            value = spec.coerce(value)
        if spec.items is not None:
            if not isinstance(value, list):
                self.fail(keypath, "must be a list")
            return [self.value(v, spec.items, keypath + (i,)) for i, v in enumerate(value)]
        if spec.schema is not None:
            return self.mapping(value, spec.schema, keypath)
        if spec.values is not None:
            if not isinstance(value, dict):
                self.fail(keypath, "must be a mapping of names to entries")
            return {str(k): self.value(v, spec.values, keypath + (k,)) for k, v in value.items()}
        types = spec.types if isinstance(spec.types, tuple) else (spec.types,)
        if isinstance(value, bool) and bool not in types:
            self.fail(keypath, f"must be {_type_name(spec.types)}, got {value!r}")
        if not isinstance(value, types):
            self.fail(keypath, f"must be {_type_name(spec.types)}, got {value!r}")
        if spec.choices is not None and value not in spec.choices:
            self.fail(keypath, f"{value!r} is not one of: {', '.join(map(str, spec.choices))}")
        if spec.check is not None:
            problem = spec.check(value)
            if problem:
                self.fail(keypath, f"{value!r} {problem}")
        return value


def key_error(path: Path, keypath: tuple, message: str) -> ConfigError:
    """An error about a key that only shows once the file is used (a kernel path that is
    missing, an offset past a segment): the file is read again for the key's line."""
    try:
        located = _Located(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        located = _Located("")
    return Validator(path, located).error(keypath, message)


# ---------------------------------------------------------------- lab.yaml

KERNEL_SCHEMA = {
    "debian_package": Field(str, default=None),
    "path": Field(str, default=None),
    "recipe": Field(str, default=None),  # guests/kernels/NAME.yaml (kernel/build.py)
    # the guest architecture of a Debian package or path kernel (a recipe names its own)
    "arch": Field(str, default=None, choices=ARCH_NAMES),
    "description": Field(str, default=""),
    # scenario name -> why this kernel is known to fail it (shown, never hidden) and the
    # outcome(s) it must fail with: another failure is not the expected one
    "expect_fail": Field(dict, default={}, values=Field(dict, schema={
        "reason": Field(str),
        "outcomes": Field(list, items=Field(str, choices=OUTCOMES)),
    })),
}

LAB_SCHEMA = {
    "accel": Field(str, default="auto", choices=ACCELERATORS),
    "machine": Field(dict, schema={
        "type": Field(str, default="pc", choices=("pc", "q35")),
        "memory_mib": Field(int, default=1024, check=lambda v: None if 256 <= v <= 3072
                            else "must be between 256 and 3072 (RAM below the PCI hole)"),
        "smp": Field(int, default=1, check=_positive),
        "crashkernel_mib": Field(int, default=256, check=_positive),
        "cmdline": Field(str, default=DEFAULT_CMDLINE),
        "capture_cmdline": Field(str, default=DEFAULT_CAPTURE_CMDLINE),
        "tcg_threads": Field(str, default="multi", choices=("multi", "single")),
    }, default={}),
    "timeouts": Field(dict, schema={
        "boot": Field((int, float), default=90, check=_positive),
        "load": Field((int, float), default=60, check=_positive),
        "verdict": Field((int, float), default=90, check=_positive),
    }, default={}),
    "artifacts_dir": Field(str, default="artifacts"),
    "cache_dir": Field(str, default=None),
    "snapshot_cache_mib": Field(int, default=4096, check=_positive),
    "default_kernel": Field(str),
    "kernels": Field(dict, values=Field(dict, schema=KERNEL_SCHEMA)),
}


@dataclass(frozen=True)
class MachineConfig:
    type: str = "pc"
    memory_mib: int = 1024
    smp: int = 1
    crashkernel_mib: int = 256
    cmdline: str = DEFAULT_CMDLINE
    capture_cmdline: str = DEFAULT_CAPTURE_CMDLINE
    tcg_threads: str = "multi"


@dataclass(frozen=True)
class Timeouts:
    boot: float = 90
    load: float = 60
    verdict: float = 90


@dataclass(frozen=True)
class KernelEntry:
    """A catalogue entry: a Debian package (resolved at run time), a bzImage path,
    or a recipe (built from source + patches, cached)."""

    name: str
    debian_package: str | None = None
    path: str | None = None
    recipe: str | None = None
    description: str = ""
    expect_fail: dict[str, str] = field(default_factory=dict)
    arch: str | None = None  # None: x86_64, or the recipe's own
    expect_fail_outcomes: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class LabConfig:
    path: Path
    accel: str
    machine: MachineConfig
    timeouts: Timeouts
    artifacts_dir: Path
    cache_dir: Path
    default_kernel: str
    kernels: dict[str, KernelEntry] = field(default_factory=dict)
    snapshot_cache_mib: int = 4096  # snapshots beyond this size go, least recently used first

    @property
    def scenarios_dir(self) -> Path:
        """The scenarios/ folder next to lab.yaml."""
        return self.path.parent.resolve() / "scenarios"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kexec-lab"


def load_lab(path: Path, accel: str | None = None, artifacts_dir: str | Path | None = None) -> LabConfig:
    """Read lab.yaml; relative directories are relative to the file's folder.  `accel` and
    `artifacts_dir` (the command line's --accel and --artifacts) override the file's."""
    path = Path(path)
    data, located = read_yaml(path)
    check = Validator(path, located)
    raw = check.mapping(data, LAB_SCHEMA)
    kernels = {}
    for name, entry in raw["kernels"].items():
        if sum(bool(entry[k]) for k in ("debian_package", "path", "recipe")) != 1:
            check.fail(("kernels", name), "needs exactly one of 'debian_package' or 'path' (or 'recipe')")
        if entry["recipe"] and entry["arch"]:
            check.fail(("kernels", name, "arch"), "a recipe names its architecture itself "
                       "(arch: in the recipe file)")
        for scenario, known in entry["expect_fail"].items():
            if not known["outcomes"]:
                check.fail(("kernels", name, "expect_fail", scenario, "outcomes"),
                           "names no outcome: list the failing outcome(s) this kernel must show")
        failing = entry.pop("expect_fail")
        kernels[name] = KernelEntry(name=name, **entry,
                                    expect_fail={s: k["reason"] for s, k in failing.items()},
                                    expect_fail_outcomes={s: tuple(k["outcomes"]) for s, k in failing.items()})
    if raw["default_kernel"] not in kernels:
        check.fail(("default_kernel",), f"{raw['default_kernel']!r} is not in 'kernels' "
                   f"(known: {', '.join(sorted(kernels))})")
    base = path.parent.resolve()
    cache = Path(os.path.expanduser(raw["cache_dir"])) if raw["cache_dir"] else default_cache_dir()
    return LabConfig(
        path=path,
        accel=accel or raw["accel"],
        machine=MachineConfig(**raw["machine"]),
        timeouts=Timeouts(**raw["timeouts"]),
        artifacts_dir=Path(artifacts_dir).resolve() if artifacts_dir
        else base / os.path.expanduser(raw["artifacts_dir"]),
        cache_dir=base / cache,
        default_kernel=raw["default_kernel"],
        kernels=kernels,
        snapshot_cache_mib=raw["snapshot_cache_mib"],
    )


# ---------------------------------------------------------------- scenarios

def _offset_check(value: Any) -> str | None:
    if isinstance(value, str):
        return None if value in PLACEMENTS else f"is not an integer nor one of: {', '.join(PLACEMENTS)}"
    return _non_negative(value)


def _config_check(value: Any) -> str | None:
    return None if CONFIG_ASSIGNMENT.match(value) else "is not of the form CONFIG_NAME=value"


# What the dump must hold beyond the outcome (smp.py checks them): PRSTATUS notes in the
# dump (default: one per CPU online at the crash), and whether a CPU hot-add rewrote the
# ELF core headers in guest RAM.
DUMP_EXPECT_SCHEMA = {
    "prstatus_notes": Field(int, default=None, check=_non_negative),
    "elfcorehdr": Field(str, default=None, choices=("changed", "unchanged")),
}


def _boot_cmdline_check(value: Any) -> str | None:
    """Extra primary kernel parameters: plain words, none the lab sets itself."""
    if len(value) > BOOT_CMDLINE_MAX:
        return f"is longer than {BOOT_CMDLINE_MAX} characters"
    for word in value.split():
        if not BOOT_WORD.match(word):
            return f"has {word!r}, which is not a kernel parameter (word or word=value; no quotes)"
        if word.split("=", 1)[0] in LAB_OWNED_PARAMS:
            return (f"sets {word.split('=', 1)[0]}=, which the lab sets itself "
                    f"({', '.join(LAB_OWNED_PARAMS)}); crashkernel: use boot.crashkernel")
    return None


EXPECT_CASE_SCHEMA = {
    "kernel": Field(str, default=None),
    "arch": Field(str, default=None, choices=ARCH_NAMES),
    "config": Field(str, default=None, check=_config_check),
    # the lab's signing key is (true) or is not (false) built into the kernel's keyring,
    # as found in the kernel image itself (signing.trusted_lab_keys)
    "lab_key": Field(bool, default=None),
    "outcome": Field(str, choices=OUTCOMES),
    "errno": Field(str, default=None, choices=ERRNO_NAMES),
    "cause": Field(str, default=None, choices=CAUSE_NAMES),  # a failure outcome's (causes.py)
    "reason": Field(str),
    **DUMP_EXPECT_SCHEMA,
    # false: this kernel accepts no image the lab has, so no follow-up load can work
    "then_intact": Field(bool, default=None),
}

EXPECT_SCHEMA = {
    "outcome": Field(str, choices=OUTCOMES),
    "errno": Field(str, default=None, choices=ERRNO_NAMES),
    "cause": Field(str, default=None, choices=CAUSE_NAMES),  # a failure outcome's (causes.py)
    "reason": Field(str, default=""),
    **DUMP_EXPECT_SCHEMA,
    "when": Field(list, default=[], items=Field(dict, schema=EXPECT_CASE_SCHEMA)),
}

TRIGGER_SCHEMA = {
    "kind": Field(str, default="sysrq", choices=TRIGGERS),
    "cpu": Field(int, default=None, check=_non_negative),  # the helper pins itself there
}

USERLANDS = ("lab", "debian")
SCENARIO_SCHEMA = {
    "description": Field(str, default=""),
    "boot": Field(dict, schema={
        "crashkernel": Field(bool, default=True),
        "cmdline": Field(str, default="", check=_boot_cmdline_check),  # e.g. lockdown=integrity
    }, default={}),
    "load": Field(dict, schema={
        "method": Field(str, default="kexec_file_load", choices=LOAD_METHODS),
        "kernel": Field(str, default="default", choices=KERNEL_IMAGES),
        "cmdline": Field(str, default=""),
        "cmdline_length": Field(int, default=None, check=lambda v: None if 1 <= v <= 4000 else
                                "must be between 1 and 4000 (the control line limit)"),
        "unload": Field(bool, default=False),
        # false: load into the kexec (reboot) slot, not the crash one (trigger kexec-reboot)
        "crash": Field(bool, default=True),
        # another catalogue kernel as the capture or reboot kernel (pair/reboot.py)
        "kernel_from": Field(str, default=None),
    }, default={}),
    "corrupt": Field(dict, default=None, schema={
        "segment": Field(str, choices=SEGMENT_ROLES),
        "offset": Field((int, str), default="middle", check=_offset_check),
        "length": Field(int, default=16, check=_positive),
        "pattern": Field(str, default="flip", choices=PATTERNS),
        "seed": Field(int, default=0),
    }),
    # a kind, or {kind, cpu} (TRIGGER_SCHEMA): cpu is where the panic starts
    "trigger": Field((str, dict), default="sysrq"),
    # this scenario's CPUs (default: lab.yaml's machine.smp); maxcpus > smp leaves room to hot-add
    "machine": Field(dict, default={}, schema={
        "smp": Field(int, default=None, check=_positive),
        "maxcpus": Field(int, default=None, check=_positive),
    }),
    # after the load: hot-add CPUs through QMP and online them in the guest (smp.py)
    "hotplug": Field(dict, default=None, schema={
        "cpus": Field(int, default=0, check=_non_negative),
        "memory_mib": Field(int, default=0, check=lambda v: None if v % 128 == 0 and 0 <= v <= 1024
                            else "must be 0 to 1024 in whole 128 MiB memory blocks"),  # one DIMM
        "reload": Field(bool, default=False),  # load the capture kernel again afterwards
    }),
    "then_intact": Field(bool, default=False),
    # lab: the lab's helper and initramfs; debian: a Debian 12 root disk and its kdump-tools
    # (labctl/guest/rootfs.py, labctl/pair/distro.py)
    "userland": Field(str, default="lab", choices=USERLANDS),
    # what a kernel must have for the scenario to apply (else the pair is skipped)
    "requires": Field(dict, default={}, schema=requires_schema(Field)),
    "expect": Field(dict, schema=EXPECT_SCHEMA,
                    coerce=lambda v: {"outcome": v} if isinstance(v, str) else v),
}


@dataclass(frozen=True)
class Corruption:
    segment: str
    offset: int | str = "middle"
    length: int = 16
    pattern: str = "flip"
    seed: int = 0


@dataclass(frozen=True)
class Cpus:
    """A scenario's own CPU counts; None takes lab.yaml's machine.smp (maxcpus: = smp)."""

    smp: int | None = None
    maxcpus: int | None = None


@dataclass(frozen=True)
class Hotplug:
    """CPUs and a DIMM hot-added after the load (and onlined), optionally then a reload."""

    cpus: int = 0
    memory_mib: int = 0
    reload: bool = False


@dataclass(frozen=True)
class LoadStep:
    method: str = "kexec_file_load"
    kernel: str = "default"  # or a bad image (kernel/load_images.py)
    cmdline: str = ""
    cmdline_length: int | None = None  # pad the capture command line to this many bytes
    unload: bool = False  # unload again before the trigger
    crash: bool = True  # False: kexec_file_load without KEXEC_FILE_ON_CRASH (`kexec -l`)
    kernel_from: str | None = None  # another catalogue kernel is the one loaded


@dataclass(frozen=True)
class Expected:
    """What one kernel should do, and why when it is not the scenario's default."""

    outcome: str
    errno: str | None = None
    reason: str = ""
    prstatus_notes: int | None = None  # None: one per CPU online at the crash
    elfcorehdr: str | None = None  # after a CPU hot-add: changed | unchanged | not judged
    then_intact: bool | None = None  # None: as the scenario says
    cause: str | None = None  # what a failure outcome must be caused by (causes.py)


@dataclass(frozen=True)
class ExpectCase:
    outcome: str
    reason: str
    kernel: str | None = None
    config: str | None = None
    errno: str | None = None
    prstatus_notes: int | None = None
    elfcorehdr: str | None = None
    lab_key: bool | None = None
    then_intact: bool | None = None
    arch: str | None = None  # alone or beside config / lab_key: both must hold
    cause: str | None = None

    def matches(self, kernel: str, symbols: dict[str, str], facts: dict | None = None,
                arch: str = "x86_64") -> bool:
        """facts: what the lab found in the kernel (lab_key: True/False, None if unknown)."""
        if self.kernel is not None:
            return self.kernel == kernel
        if self.arch is not None and self.arch != arch:
            return False
        if self.lab_key is not None:
            return (facts or {}).get("lab_key") is self.lab_key
        if self.config is None:
            return True
        name, _, value = self.config.partition("=")
        return symbols.get(name, "n") == value


@dataclass(frozen=True)
class Expectation:
    """The default expected outcome plus kernel-specific cases, first match wins."""

    outcome: str
    errno: str | None = None
    reason: str = ""
    cases: tuple[ExpectCase, ...] = ()
    prstatus_notes: int | None = None
    elfcorehdr: str | None = None
    cause: str | None = None

    def resolve(self, kernel: str, symbols: dict[str, str], facts: dict | None = None,
                arch: str = "x86_64") -> Expected:
        for case in self.cases:
            if case.matches(kernel, symbols, facts, arch):
                return Expected(case.outcome, case.errno, case.reason, case.prstatus_notes,
                                case.elfcorehdr, then_intact=case.then_intact, cause=case.cause)
        return Expected(self.outcome, self.errno, self.reason, self.prstatus_notes, self.elfcorehdr,
                        cause=self.cause)


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    description: str
    load: LoadStep
    corrupt: Corruption | None
    trigger: str
    expect: Expectation
    crashkernel: bool = True
    then_intact: bool = False
    trigger_cpu: int | None = None  # the CPU the panic starts on (None: wherever it runs)
    cpus: Cpus = Cpus()
    hotplug: Hotplug | None = None
    boot_cmdline: str = ""  # extra primary kernel parameters
    userland: str = "lab"  # debian: the distribution's own kdump stack (pair/distro.py)
    requires: Requires = Requires()  # config/requirements.py


def _check_cause(entry: dict, keypath: tuple, check: Validator) -> None:
    """A failure outcome names the cause it expects, one its outcome can have; no other
    outcome takes one."""
    names = CAUSES.get(entry["outcome"])
    if names and entry["cause"] is None:
        check.fail(keypath + ("cause",), f"is required: {entry['outcome']} names the cause this "
                   f"kernel must show (one of: {', '.join(names)})")
    if entry["cause"] is not None and not names:
        check.fail(keypath + ("cause",), f"only a failure outcome ({', '.join(CAUSES)}) takes a cause")
    if names and entry["cause"] not in names:
        check.fail(keypath + ("cause",), f"{entry['cause']!r} is not a cause of {entry['outcome']} "
                   f"(one of: {', '.join(names)})")


def _expectation(raw: dict, check: Validator) -> Expectation:
    _check_cause(raw, ("expect",), check)
    cases = []
    for i, case in enumerate(raw["when"]):
        if sum(case[k] is not None for k in ("kernel", "config", "lab_key")) > 1:
            check.fail(("expect", "when", i), "needs exactly one of 'kernel', 'config' or 'lab_key'")
        if case["kernel"] is not None and case["arch"] is not None:
            check.fail(("expect", "when", i), "'kernel' names one kernel: it takes no 'arch'")
        if all(case[k] is None for k in ("kernel", "config", "lab_key", "arch")):
            check.fail(("expect", "when", i), "needs 'kernel', 'config', 'lab_key' or 'arch' "
                       "('arch' may stand beside 'config' or 'lab_key')")
        if case["then_intact"] and case["outcome"] not in ("load-rejected", "load-accepted"):
            check.fail(("expect", "when", i, "then_intact"),
                       "only follows a load-rejected or load-accepted expectation")
        _check_cause(case, ("expect", "when", i), check)
        cases.append(ExpectCase(**case))
    return Expectation(raw["outcome"], raw["errno"], raw["reason"], tuple(cases),
                       raw["prstatus_notes"], raw["elfcorehdr"], raw["cause"])


def _trigger(value: str | dict, check: Validator) -> dict:
    """`trigger: sysrq` is short for `trigger: {kind: sysrq}`."""
    if isinstance(value, str):
        return {"kind": check.value(value, TRIGGER_SCHEMA["kind"], ("trigger",)), "cpu": None}
    return check.mapping(value, TRIGGER_SCHEMA, ("trigger",))


def _check_combinations(raw: dict, check: Validator) -> None:
    """Rules that span keys, so that a scenario cannot ask for something meaningless."""
    if raw["corrupt"] and raw["trigger"]["kind"] == "none":
        check.fail(("trigger",), "'none' stops after the load, so 'corrupt' would never be judged")
    if raw["then_intact"] and raw["expect"]["outcome"] not in (Outcome.LOAD_REJECTED, Outcome.LOAD_ACCEPTED):
        check.fail(("then_intact",), "only follows a load-rejected or load-accepted expectation")
    if raw["corrupt"] and raw["corrupt"]["segment"] == "backup" and raw["load"]["method"] != "kexec_load":
        check.fail(("corrupt", "segment"), "only kexec_load (kexec-tools) loads a backup segment")
    _check_cpus(raw, check)
    _check_reboot(raw, check)
    _check_userland(raw, check)


# What the host can find again in guest RAM after a reboot load: segments whose bytes it
# knows (pair/reboot.py); purgatory and boot_params are built by the loader.
REBOOT_CORRUPTIBLE = ("kernel", "initrd")


def _check_reboot(raw: dict, check: Validator) -> None:
    """A kexec reboot needs a load without the crash flag, and nothing crash-only."""
    load, reboot = raw["load"], raw["trigger"]["kind"] == "kexec-reboot"
    if reboot and load["crash"]:
        check.fail(("load", "crash"), "kexec-reboot reboots into the kexec image: set load.crash: false")
    if not load["crash"] and not reboot:
        check.fail(("load", "crash"), "a load without the crash flag is entered by a kexec reboot "
                   "only: set trigger: kexec-reboot")
    if load["kernel_from"] is not None and load["kernel"] != "default":
        check.fail(("load", "kernel_from"), f"loads another catalogue kernel, not the "
                   f"{load['kernel']!r} image: drop one of them")
    if not reboot:
        return
    if raw["hotplug"]:
        check.fail(("hotplug",), "hot-adds for a dump; a kexec reboot writes none")
    if raw["then_intact"]:
        check.fail(("then_intact",), "follows a load that is the question; a kexec reboot "
                   "reboots after its load")
    if load["unload"]:
        check.fail(("load", "unload"), "unloads the crash kernel; a kexec reboot has none")
    if load["kernel"] != "default":
        check.fail(("load", "kernel"), "a kexec reboot loads the default image")
    if raw["corrupt"] and raw["corrupt"]["segment"] not in REBOOT_CORRUPTIBLE:
        check.fail(("corrupt", "segment"), f"a reboot load's segments sit in scattered pages of "
                   f"ordinary memory until the reboot; the lab finds them by their bytes, which "
                   f"it knows only for {' and '.join(REBOOT_CORRUPTIBLE)}")


def _check_userland(raw: dict, check: Validator) -> None:
    """kdump-tools loads the default capture kernel at boot and the lab crashes it with sysrq:
    the helper's other knobs have no meaning there."""
    if raw["userland"] != "debian":
        return
    load = raw["load"]
    if load["kernel"] != "default" or load["cmdline"] or load["cmdline_length"] or load["unload"]:
        check.fail(("load",), "userland debian: kdump-tools loads the capture kernel itself; "
                   "only load.method (kexec_load or kexec_file_load) applies")
    if raw["trigger"]["kind"] != "sysrq" or raw["trigger"]["cpu"] is not None:
        check.fail(("trigger",), "userland debian: only 'sysrq' (echo c > /proc/sysrq-trigger)")
    if raw["hotplug"] or raw["then_intact"] or raw["machine"]["smp"] or raw["machine"]["maxcpus"]:
        check.fail(("userland",), "userland debian takes no hotplug, then_intact or machine keys")
    if raw["corrupt"] and raw["corrupt"]["segment"] not in ("kernel", "initrd", "boot_params", "purgatory"):
        check.fail(("corrupt", "segment"), "userland debian corrupts kernel, initrd, boot_params or purgatory")


def _check_cpus(raw: dict, check: Validator) -> None:
    """CPU counts and a trigger CPU that can exist; what depends on lab.yaml's smp is
    checked again when the run resolves it (smp.resolve_cpus)."""
    smp, maxcpus = raw["machine"]["smp"], raw["machine"]["maxcpus"]
    if smp is not None and maxcpus is not None and maxcpus < smp:
        check.fail(("machine", "maxcpus"), f"must be at least machine.smp ({smp})")
    trigger = raw["trigger"]
    if trigger["cpu"] is not None and trigger["kind"] != "sysrq":
        check.fail(("trigger", "cpu"), "only a sysrq trigger can choose its CPU: QEMU's inject-nmi "
                   "reaches every x86 vCPU (hw/i386/x86.c: x86_nmi), and init-exit runs where "
                   "PID 1 runs; drop 'cpu' or use kind: sysrq")
    top = maxcpus if maxcpus is not None else smp
    if trigger["cpu"] is not None and top is not None and trigger["cpu"] >= top:
        check.fail(("trigger", "cpu"), f"CPU {trigger['cpu']} does not exist with "
                   f"{top} CPU(s); CPUs count from 0")
    if raw["hotplug"] and raw["trigger"]["kind"] == "none":
        check.fail(("hotplug",), "what is hot-added only shows in a dump: needs a trigger")
    if raw["hotplug"] and not raw["hotplug"]["cpus"] and not raw["hotplug"]["memory_mib"]:
        check.fail(("hotplug",), "hot-adds nothing: set cpus or memory_mib")


def load_scenario(path: Path) -> Scenario:
    path = Path(path)
    data, located = read_yaml(path)
    check = Validator(path, located)
    raw = check.mapping(data, SCENARIO_SCHEMA)
    raw["trigger"] = _trigger(raw["trigger"], check)
    _check_combinations(raw, check)
    return Scenario(
        name=path.stem,
        path=path,
        description=raw["description"],
        load=LoadStep(**raw["load"]),
        corrupt=Corruption(**raw["corrupt"]) if raw["corrupt"] else None,
        trigger=raw["trigger"]["kind"],
        trigger_cpu=raw["trigger"]["cpu"],
        cpus=Cpus(**raw["machine"]),
        hotplug=Hotplug(**raw["hotplug"]) if raw["hotplug"] else None,
        expect=_expectation(raw["expect"], check),
        crashkernel=raw["boot"]["crashkernel"],
        then_intact=raw["then_intact"],
        boot_cmdline=" ".join(raw["boot"]["cmdline"].split()),
        userland=raw["userland"],
        requires=Requires.from_raw(raw["requires"]),
    )


def find_scenario(name_or_path: str, scenarios_dir: Path) -> Path:
    """A scenario name from scenarios/, or a path to a YAML file anywhere."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"scenario file not found: {name_or_path}")
        return candidate
    if not SCENARIO_NAME.match(name_or_path):
        raise ConfigError(f"bad scenario name {name_or_path!r}: use letters, digits, '.', '_', '-' "
                          "(or give a path to a .yaml file)")
    found = scenarios_dir / f"{name_or_path}.yaml"
    if not found.is_file():  # scenarios outside the all-kernel matrix: kexec-reboot/, mixed/
        found = next(iter(sorted(scenarios_dir.glob(f"*/{name_or_path}.yaml"))), found)
    if not found.is_file():
        known = sorted(p.stem for p in scenarios_dir.glob("*.yaml"))
        raise ConfigError(f"unknown scenario {name_or_path!r}; known: {', '.join(known) or 'none'} "
                          f"(in {scenarios_dir})")
    return found
