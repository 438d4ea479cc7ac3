"""What one pair expects of its kernel, and the kernel facts that decide it.

The scenario's `expect` resolved for this kernel (kernel/facts.py): from the running
kernel's word once it booted (its sysfs, then /proc/config.gz), else its config file, and
from what the lab finds in its image (the lab keys built in).  Each fact and its source
go into the pair's evidence; a fact nothing told is UnknownFact (a configuration-class
result), never the scenario's default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from labctl.config.schema import Expected, LabConfig, Scenario
from labctl.errors import InfraError
from labctl.evidence.applicability import symbols
from labctl.kernel.facts import KernelFacts, UnknownFact, from_sysfs, needed_symbols
from labctl.kernel.facts import resolve as resolve_expectation
from labctl.kernel.providers import Kernel
from labctl.kernel.signing import trusted_lab_keys
from labctl.pair.applies import needs_for
from labctl.pair.steps import Session


@dataclass
class PairExpectation:
    """The expectation of one kernel x scenario pair; `evidence` is the pair's own dict."""

    lab: LabConfig
    kernel: Kernel
    scenario: Scenario
    evidence: dict
    facts: KernelFacts = field(default_factory=KernelFacts)

    def __post_init__(self) -> None:
        if self.kernel.config and self.kernel.config.exists():
            self.facts.config_file = self.kernel.config_symbols()
            self.facts.config_file_source = f"config file {self.kernel.config}"

    def learn(self, session: Session, hello: dict) -> None:
        """The options the expectation (and the scenario's requirements) need, from the running
        kernel: its sysfs, and its /proc/config.gz when sysfs does not tell and it has one."""
        self.facts.running = from_sysfs(hello.get("sysfs"))
        needed = [*needed_symbols(self.scenario.expect), *symbols(needs_for(self.lab, self.scenario))]
        if any(s not in self.facts.running for s in needed) and (hello.get("sysfs") or {}).get("config_gz"):
            self.facts.config_gz = session.kernel_config()

    @cached_property
    def trusted_keys(self) -> list[str] | None:
        """The lab keys built into this kernel, found in its image; None if unknown."""
        try:
            return trusted_lab_keys(self.kernel.bzimage, self.lab.cache_dir)
        except InfraError as exc:
            self.evidence["kernel_facts_error"] = str(exc)
            return None

    def resolve(self) -> Expected:
        """The scenario's expectation for this kernel on the facts known now; UnknownFact
        when it depends on one nothing told."""
        keys = self.trusted_keys
        found = {"lab_key": None if keys is None else "lab" in keys}
        self.evidence["kernel_facts"] = {**found, "trusted_lab_keys": keys,
                                         **self.facts.to_json(needed_symbols(self.scenario.expect))}
        return resolve_expectation(self.scenario.expect, self.kernel.name, self.facts, found,
                                   self.kernel.arch)

    def outcome_known_now(self) -> str | None:
        """The expected outcome as far as it is known before any boot (None: the running
        kernel will tell)."""
        try:
            return self.resolve().outcome
        except UnknownFact:
            return None

    def then_intact(self) -> bool:
        """Whether a rejection is followed by a valid load and crash on this kernel."""
        try:
            case = self.resolve().then_intact
        except UnknownFact:  # the run ends as a configuration-class result anyway
            case = None
        return self.scenario.then_intact if case is None else case
