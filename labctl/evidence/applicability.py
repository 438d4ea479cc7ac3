"""Does a scenario apply to a kernel?  Decided before booting where the kernel's
architecture and config file tell, from the booted kernel where only it can tell.

A scenario needs what it declares (`requires:`, config/requirements.py) and
what its own keys imply (implied(): a load method needs its syscall, two CPUs
need SMP, a DIMM needs memory hotplug, an x86-only lab feature needs x86_64).
A need the kernel lacks makes the pair `skipped`, with the scenario key and
the kernel fact; nothing else can skip a pair.  A skip never hides a failure:
a need that the config file said was met but that the running kernel does not
meet is a failure (RequirementUnmet), and a need nothing told about before the
boot is checked on the booted kernel (NotApplicable there) or left to the run.
"""

from __future__ import annotations

from dataclasses import dataclass

from labctl.config.arch import ARCHES
from labctl.config.schema import Scenario
from labctl.errors import ConfigError
from labctl.evidence.smp import cpus_do_not_apply
from labctl.kernel.facts import Fact, KernelFacts

MET, UNMET, UNKNOWN = "met", "unmet", "unknown"
X86_ONLY = ("x86_64",)
# Each x86-only lab feature and the fact that makes it so.
WHY_SMP = ("the lab's multi-CPU evidence reads x86 registers and APIC ids (labctl/evidence/smp.py)")
WHY_CPU_HOTPLUG = "QEMU 7.2 hot-adds vCPUs only on x86 machines here (arm64/riscv64 virt cannot)"
WHY_DIMM = ("the lab hot-adds a pc-dimm through ACPI, which the arm64/riscv64 virt guests "
            "(booted with a device tree, no ACPI) cannot take")
WHY_NMI = ("the NMI trigger arms kernel.unknown_nmi_panic, which only x86 has "
           "(arch/x86/kernel/nmi.c), and uses x86's QMP inject-nmi")
WHY_IMAGES = "the lab makes the bad and signed images from an x86_64 bzImage (kernel/load_images.py)"
SYSCALL_SYMBOL = {"kexec_file_load": "CONFIG_KEXEC_FILE", "kexec_load": "CONFIG_KEXEC"}


@dataclass(frozen=True)
class Need:
    """One thing a kernel must have: a config option, an architecture, or both."""

    key: str  # the scenario key that asks for it, e.g. "machine.smp" or "requires.config"
    text: str  # what is needed, for people
    symbol: str | None = None  # CONFIG_* that must hold `value`
    value: str = "y"
    arches: tuple[str, ...] = ()  # where it can hold at all (empty: every architecture)
    why: str = ""  # why only there
    cpus: int = 0  # CPUs the booted kernel must be able to use (checked after the boot)


@dataclass(frozen=True)
class Check:
    need: Need
    state: str  # met | unmet | unknown
    fact: str  # the kernel fact that decided it, with its source

    @property
    def reason(self) -> str:
        return f"{self.need.key}: needs {self.need.text}, but {self.fact}"

    def to_json(self) -> dict:
        return {"key": self.need.key, "needs": self.need.text, "state": self.state, "fact": self.fact}


class NotApplicable(ConfigError):
    """The booted kernel shows a need unmet that nothing told before the boot: skipped."""

    def __init__(self, check: Check, checks: list[Check]):
        super().__init__(check.reason)
        self.check, self.checks = check, checks  # checks: every need, for the evidence


class RequirementUnmet(NotApplicable):
    """The config file said a need was met; the running kernel says otherwise: a failure."""


def _method_need(key: str, method: str) -> Need:
    symbol = SYSCALL_SYMBOL[method]
    return Need(key, f"{method} ({symbol}=y)", symbol=symbol,
                arches=tuple(a.name for a in ARCHES.values() if method in a.methods),
                why=f"the lab drives {method} only there (no kexec-tools for riscv64 in Debian 12)")


def implied(scenario: Scenario, cpus: int) -> list[Need]:
    """What the scenario's own keys need; cpus: the CPUs it runs (smp.resolve_cpus)."""
    method = scenario.load.method
    needs = [_method_need("load.method", method)]
    if cpus > 1:
        key = "machine.maxcpus" if scenario.cpus.maxcpus and scenario.cpus.maxcpus > (scenario.cpus.smp or 1) \
            else "machine.smp"
        needs.append(Need(key, f"{cpus} CPUs (CONFIG_SMP=y)", symbol="CONFIG_SMP", arches=X86_ONLY,
                          why=WHY_SMP, cpus=cpus))
    if scenario.hotplug and scenario.hotplug.cpus:
        needs.append(Need("hotplug.cpus", "CPU hotplug (CONFIG_HOTPLUG_CPU=y)", symbol="CONFIG_HOTPLUG_CPU",
                          arches=X86_ONLY, why=WHY_CPU_HOTPLUG))
    if scenario.hotplug and scenario.hotplug.memory_mib:
        needs.append(Need("hotplug.memory_mib", "memory hotplug (CONFIG_MEMORY_HOTPLUG=y)",
                          symbol="CONFIG_MEMORY_HOTPLUG", arches=X86_ONLY, why=WHY_DIMM))
    if scenario.trigger == "nmi":
        needs.append(Need("trigger", "an NMI panic", arches=X86_ONLY, why=WHY_NMI))
    if scenario.load.kernel != "default":
        needs.append(Need("load.kernel", f"the {scenario.load.kernel!r} image", arches=X86_ONLY,
                          why=WHY_IMAGES))
    if scenario.corrupt:
        role = scenario.corrupt.segment
        needs.append(Need("corrupt.segment", f"a {role} segment loaded by {method}",
                          arches=tuple(a.name for a in ARCHES.values() if role in a.roles(method)),
                          why=f"{method} loads no {role} segment there (config/arch.py load_roles)"))
    return needs


def declared(scenario: Scenario) -> list[Need]:
    """What the scenario's `requires:` asks for."""
    req, method = scenario.requires, scenario.load.method
    needs = []
    if req.smp:
        needs.append(Need("requires.smp", "SMP (CONFIG_SMP=y)", symbol="CONFIG_SMP", cpus=2))
    if req.memory_hotplug:
        needs.append(Need("requires.memory_hotplug", "memory hotplug (CONFIG_MEMORY_HOTPLUG=y)",
                          symbol="CONFIG_MEMORY_HOTPLUG"))
    if req.purgatory:
        checks = [a.name for a in ARCHES.values()
                  if (a.file_purgatory_checks if method == "kexec_file_load" else a.tool_purgatory_checks)]
        source = ("file_purgatory_checks: arm64 selects no ARCH_SUPPORTS_KEXEC_PURGATORY, so "
                  "kernel/kexec_file.c hashes nothing" if method == "kexec_file_load"
                  else "tool_purgatory_checks: kexec-tools has no checking purgatory for riscv64")
        needs.append(Need("requires.purgatory", f"a purgatory that checks the segment digests ({method})",
                          arches=tuple(checks), why=f"{method}'s purgatory checks digests only on "
                          f"{' and '.join(checks)} (config/arch.py {source})"))
    for assignment in req.config:
        symbol, _, value = assignment.partition("=")
        needs.append(Need("requires.config", assignment, symbol=symbol, value=value))
    if req.arch:
        needs.append(Need("requires.arch", "architecture " + " or ".join(req.arch), arches=req.arch,
                          why="declared by the scenario"))
    if req.load_method:
        needs.append(_method_need("requires.load_method", req.load_method))
    return needs


def needs_of(scenario: Scenario, cpus: int) -> list[Need]:
    """Implied first: the load method is the most basic fact, then the declared ones."""
    return [*implied(scenario, cpus), *declared(scenario)]


USERLAND_NEED = Need("userland", "an x86_64 Debian-packaged kernel (its /boot and /lib/modules go into "
                     "the Debian root disk, as its package's postinst would put them)", arches=("x86_64",),
                     why="the lab builds the Debian root disk for amd64 only (guest/rootfs.py)")


def userland_check(scenario: Scenario, arch: str, package: str | None) -> Check | None:
    """userland: debian boots Debian's own kdump stack with the kernel's package installed
    in it: a recipe or a bare image has no package to install (guest/rootfs.py)."""
    if scenario.userland != "debian":
        return None
    if arch != "x86_64":
        return Check(USERLAND_NEED, UNMET, f"the kernel is {arch}: {USERLAND_NEED.why}")
    if package is None:
        return Check(USERLAND_NEED, UNMET, "the kernel is not a Debian package (a recipe or a path)")
    return Check(USERLAND_NEED, MET, f"Debian package {package}")


def symbols(needs: list[Need]) -> list[str]:
    """The options the needs test (the running kernel is asked for them too)."""
    return [n.symbol for n in needs if n.symbol]


def _said(symbol: str, fact: Fact) -> str:
    value = f"{symbol} is not set" if fact.value == "n" else f"{symbol}={fact.value}"
    return f"{value} ({fact.source})"


def check(need: Need, arch: str, facts: KernelFacts) -> Check:
    """One need against what is known: the architecture first, then the option."""
    if need.arches and arch not in need.arches:
        return Check(need, UNMET, f"the kernel is {arch}: {need.why}")
    if need.symbol is None:
        return Check(need, MET, f"architecture {arch}")
    fact = facts.fact(need.symbol)
    if fact is None:
        return Check(need, UNKNOWN, f"{need.symbol} is not known for this kernel (no config file)")
    return Check(need, MET if fact.value == need.value else UNMET, _said(need.symbol, fact))


def decide(needs: list[Need], arch: str, facts: KernelFacts) -> list[Check]:
    return [check(need, arch, facts) for need in needs]


def first_unmet(checks: list[Check]) -> Check | None:
    return next((c for c in checks if c.state == UNMET), None)


def before_boot(facts: KernelFacts) -> KernelFacts:
    """What was known before the boot: the config file alone."""
    return KernelFacts(config_file=facts.config_file, config_file_source=facts.config_file_source)


def after_boot(needs: list[Need], arch: str, facts: KernelFacts, hello: dict, smp: int,
               maxcpus: int) -> list[Check]:
    """Check the needs again on the booted kernel's word (its CPU masks, its /proc/config.gz
    or sysfs); raise RequirementUnmet where it contradicts a config file that said the need
    was met, NotApplicable where nothing had told.  Returns the checks for the evidence."""
    earlier = {c.need: c for c in decide(needs, arch, before_boot(facts))}
    now = decide(needs, arch, facts)
    problem = cpus_do_not_apply(hello, smp, maxcpus)
    for i, current in enumerate(now):
        if problem and current.need.cpus and current.state != UNMET:
            now[i] = current = Check(current.need, UNMET, f"the running kernel says: {problem}")
        if current.state != UNMET:
            continue
        before = earlier[current.need]
        if before.state == MET:
            now[i] = Check(current.need, UNMET, f"{current.fact}, though the kernel's config file "
                           f"said {before.fact}")
            raise RequirementUnmet(now[i], now)
        raise NotApplicable(current, now)
    if problem:  # CPUs missing that no need names (lab.yaml's machine.smp): as before
        raise problem
    return now
