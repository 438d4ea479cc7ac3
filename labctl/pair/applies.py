"""The pair's side of applicability (evidence/applicability.py): decide before any guest
whether the scenario can apply to the kernel, and record a skip as the pair's result.

`labctl run` calls it from run_pair; `labctl matrix` calls it before starting a child,
so a pair that cannot apply costs neither a QEMU nor a process.
"""

from __future__ import annotations

from labctl.artifacts import pair_dir
from labctl.config.schema import LabConfig, Scenario
from labctl.errors import ConfigError
from labctl.evidence.applicability import Check, Need, decide, first_unmet, needs_of, userland_check
from labctl.evidence.smp import resolve_cpus
from labctl.kernel.facts import KernelFacts
from labctl.kernel.image import Kernel
from labctl.result import Outcome, PairResult


def needs_for(lab: LabConfig, scenario: Scenario) -> list[Need]:
    """The scenario's needs with its CPU count resolved against lab.yaml's machine.smp."""
    smp, maxcpus = resolve_cpus(lab.machine, scenario)
    return needs_of(scenario, max(smp, maxcpus))


def config_facts(kernel: Kernel) -> KernelFacts:
    """What the kernel's config file says (nothing when it has none)."""
    if kernel.config and kernel.config.exists():
        return KernelFacts(config_file=kernel.config_symbols(),
                           config_file_source=f"config file {kernel.config}")
    return KernelFacts()


def before_boot(lab: LabConfig, kernel: Kernel, scenario: Scenario) -> list[Check] | None:
    """The checks before any guest; None when the scenario's CPU keys do not fit lab.yaml
    (the run reports that configuration error itself)."""
    try:
        needs = needs_for(lab, scenario)
    except ConfigError:
        return None
    userland = userland_check(scenario, kernel.arch, kernel.package)
    return [*([userland] if userland else []), *decide(needs, kernel.arch, config_facts(kernel))]


def skip(result: PairResult, checks: list[Check] | None) -> bool:
    """Mark the result skipped if a check is unmet; True if it did."""
    unmet = first_unmet(checks or [])
    if unmet is None:
        return False
    result.outcome, result.passed = Outcome.SKIPPED, None
    result.reason = f"does not apply: {unmet.reason}"
    result.evidence["requirements"] = [c.to_json() for c in checks or []]
    return True


def skipped_pair(lab: LabConfig, kernel: Kernel, scenario: Scenario, result: PairResult) -> bool:
    """Decide before booting; on a skip fill `result` (the caller writes it)."""
    return skip(result, before_boot(lab, kernel, scenario))


def skipped_result(lab: LabConfig, kernel: Kernel, scenario: Scenario, run_id: str) -> PairResult | None:
    """The written result of a pair that cannot apply, or None if it may (`labctl matrix`:
    no child process, no guest)."""
    checks = before_boot(lab, kernel, scenario)
    if first_unmet(checks or []) is None:
        return None
    result = PairResult(run_id, scenario={"name": scenario.name, "path": str(scenario.path),
                                          "description": scenario.description,
                                          "corrupt": scenario.corrupt is not None},
                        kernel=kernel.describe(), artifacts={}, timings={"total": 0.0},
                        directory=pair_dir(lab.artifacts_dir, run_id, kernel.name, scenario.name))
    skip(result, checks)
    result.write()
    return result
