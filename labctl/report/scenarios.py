"""`labctl scenarios`: the catalogue as a list or a Markdown table, and scenario files
checked before anything boots.

`labctl scenarios check FILE...` validates each file (the same loader `labctl run`
uses: errors name file:line:key, exit 2) and resolves its expectation against every
catalogue kernel with the rule a run uses (kernel/facts.py), from what is known
before a boot: the kernel's config file and the lab keys found in its image, for the
kernels already downloaded or built.  Nothing is fetched, built or booted; what
needs a fact nobody has is printed as unknown, never guessed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from labctl.config.options import add_common_opts, lab_from_args
from labctl.config.schema import Expectation, ExpectCase, Expected, KernelEntry, LabConfig, Scenario, load_scenario
from labctl.errors import EXIT_PASSED, EXIT_USAGE, ConfigError, InfraError, LabError
from labctl.kernel.catalogue import cached_kernel, entry_arch
from labctl.kernel.facts import KernelFacts, UnknownFact, resolve
from labctl.kernel.signing import trusted_lab_keys


@dataclass
class KnownKernel:
    """What the lab knows about one catalogue kernel without fetching, building or booting."""

    name: str
    arch: str
    facts: KernelFacts
    found: dict | None  # what a run finds in the image (lab_key); None: not cached, not known yet
    note: str  # why facts are missing, when they are
    expect_fail: dict[str, str]


def known_kernel(lab: LabConfig, entry: KernelEntry, need_lab_key: bool) -> KnownKernel:
    facts, note = KernelFacts(), ""
    found: dict | None = None
    try:
        kernel = cached_kernel(lab, entry)
    except LabError as exc:
        kernel, note = None, f"cannot look it up: {exc}"
    if kernel is None:
        note = note or f"not downloaded or built yet: labctl kernel fetch/build {entry.name}"
    elif kernel.config and kernel.config.exists():
        facts = KernelFacts(config_file=kernel.config_symbols(), config_file_source=f"config file {kernel.config}")
    else:
        note = "no config file beside its image"
    if kernel is not None and need_lab_key:
        try:
            found = {"lab_key": "lab" in trusted_lab_keys(kernel.bzimage, lab.cache_dir)}
        except InfraError:  # as a run does: an image the lab cannot read matches no lab_key case
            found = {"lab_key": None}
    return KnownKernel(entry.name, entry_arch(lab, entry), facts, found, note, entry.expect_fail)


def expected_on(expect: Expectation, kernel: KnownKernel) -> Expected:
    """The expectation on this kernel, as a run would resolve it before its boot; UnknownFact
    when it depends on an option (or on the lab key) nothing known tells."""
    if kernel.found is not None:
        return resolve(expect, kernel.name, kernel.facts, kernel.found, kernel.arch)
    answers = {resolve(expect, kernel.name, kernel.facts, {"lab_key": key}, kernel.arch) for key in (True, False)}
    if len(answers) > 1:
        raise UnknownFact("lab_key")
    return answers.pop()


def describe(expected: Expected) -> str:
    return expected.outcome + (f" {expected.errno}" if expected.errno else "")


def expectation_lines(scenario: Scenario, kernels: list[KnownKernel]) -> list[str]:
    width = max(len(k.name) for k in kernels)
    lines = []
    for kernel in kernels:
        try:
            text = describe(expected_on(scenario.expect, kernel))
        except UnknownFact as exc:
            text = f"unknown: depends on {exc.symbol}" + (f"; {kernel.note}" if kernel.note else "")
        if scenario.name in kernel.expect_fail:
            text += f"  [expect_fail: {kernel.expect_fail[scenario.name]}]"
        lines.append(f"  {kernel.name:{width}}  {text}")
    return lines


def cmd_check(args: argparse.Namespace) -> int:
    lab = lab_from_args(args)
    scenarios, errors = [], []
    for name in args.files:
        try:
            path = Path(name)
            if not path.is_file():
                raise ConfigError("no such scenario file", name)
            scenarios.append(load_scenario(path))
        except ConfigError as exc:
            errors.append(str(exc))
    lab_key_asked = any(case.lab_key is not None for s in scenarios for case in s.expect.cases)
    kernels = [known_kernel(lab, entry, lab_key_asked) for _, entry in sorted(lab.kernels.items())]
    for scenario in scenarios:
        print(f"{scenario.path}: ok; expected per catalogue kernel:")
        print("\n".join(expectation_lines(scenario, kernels)))
    for error in errors:
        print(f"labctl: configuration error: {error}", file=sys.stderr)
    return EXIT_USAGE if errors else EXIT_PASSED


def when_text(case: ExpectCase) -> str:
    """A case's condition, as the scenario file writes it."""
    parts = [f"on {case.kernel}" if case.kernel else "", case.config or "",
             "" if case.lab_key is None else f"lab_key: {str(case.lab_key).lower()}",
             f"on {case.arch}" if case.arch else ""]
    return ", ".join(p for p in parts if p)


def expected_cell(expect: Expectation) -> str:
    text = f"{expect.outcome}{' ' + expect.errno if expect.errno else ''}"
    cases = [f"{when_text(c)}: {c.outcome}{' ' + c.errno if c.errno else ''}" for c in expect.cases]
    return "; ".join([text, *cases])


def first_sentence(text: str) -> str:
    sentence, _, _ = " ".join(text.split()).partition(". ")
    return sentence.rstrip(".") + "."


def markdown_table(scenarios: list[Scenario]) -> str:
    """One row per scenario: what it does and what it expects (the default, then each
    `when:` case in order, first match wins)."""
    rows = ["# Scenario catalogue", "",
            "Generated by `labctl scenarios --markdown > docs/catalogue.md` from `scenarios/*.yaml`; "
            "[scenarios.md](scenarios.md) explains the keys, `labctl scenarios check FILE` what a "
            "file expects on each catalogue kernel.", "",
            "| scenario | what it does | expected (then `when:` cases, first match wins) |", "|---|---|---|"]
    for s in scenarios:
        rows.append(f"| `{s.name}` | {first_sentence(s.description).replace('|', '/')} | "
                    f"{expected_cell(s.expect).replace('|', '/')} |")
    return "\n".join(rows) + "\n"


def cmd_scenarios(args: argparse.Namespace) -> int:
    lab = lab_from_args(args)
    scenarios = sorted((load_scenario(path) for path in lab.scenarios_dir.glob("*.yaml")), key=lambda s: s.name)
    if args.markdown:
        print(markdown_table(scenarios), end="")
        return EXIT_PASSED
    for scenario in scenarios:
        print(f"{scenario.name:28} expect {scenario.expect.outcome:18} {scenario.description}")
    return EXIT_PASSED


def register(sub) -> None:
    scenarios = sub.add_parser("scenarios", help="list the scenarios, or check scenario files")
    scenarios.add_argument("--markdown", action="store_true",
                           help="print the catalogue as the Markdown table docs/scenarios.md includes")
    add_common_opts(scenarios)
    scenarios.set_defaults(func=cmd_scenarios)
    ssub = scenarios.add_subparsers(dest="scenarios_command")
    check = ssub.add_parser("check", help="validate scenario files without booting, and print what "
                                          "each would expect on every catalogue kernel")
    check.add_argument("files", nargs="+", metavar="FILE", help="scenario YAML files")
    add_common_opts(check)
    check.set_defaults(func=cmd_check)
