"""One kernel x scenario pair, from guest assets to result.json, however it ends.

The result is always written: a verdict, an infrastructure error, a
configuration error found only once the kernel showed its segments, or an
interruption (with the phase it hit).  QEMU, its sockets and the RAM file are
gone before this returns, because the Machine context manager owns them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from labctl import stopping
from labctl.artifacts import pair_dir
from labctl.config.arch import HOST, Arch, get_arch
from labctl.config.schema import Expected, LabConfig, LoadStep, MachineConfig, Scenario, key_error
from labctl.errors import ConfigError, InfraError, Interrupted, LabError
from labctl.evidence.applicability import NotApplicable, RequirementUnmet, after_boot
from labctl.evidence.smp import cpu_watch, resolve_cpus
from labctl.evidence.verdict import judge
from labctl.guest.accel import Accel, AccelChooser, KvmUnusable, kvm_unusable
from labctl.guest.assets import GuestAssets, build_assets
from labctl.guest.machine import MachineSpec
from labctl.kernel.facts import UnknownFact
from labctl.kernel.load_images import BAD_IMAGES, SIGNED_IMAGES
from labctl.kernel.providers import Kernel
from labctl.pair import distro, reboot
from labctl.pair.applies import needs_for, skipped_pair
from labctl.pair.expectation import PairExpectation
from labctl.pair.hotplug import (
    bytes_changed,
    describe_headers,
    headers_facts,
    hot_add_cpus,
    hot_add_memory,
    read_headers,
)
from labctl.pair.snapshot import (
    EVIDENCE_LOGS,
    RestoreFailed,
    Snapshot,
    SnapshotUnavailable,
    choose_fork,
    launched,
    obtain,
    restore_pair,
)
from labctl.pair.steps import Finding, Loaded, PrimaryOops, Session, opened_session
from labctl.progress import Progress
from labctl.result import Outcome, PairResult


def primary_cmdline(machine: MachineConfig, crashkernel: bool = True, extra: str = "",
                    arch: Arch = HOST) -> str:
    """The primary kernel: console (ttyS0 on x86_64), memory reserved for the capture kernel
    (unless the scenario is about having none), and no reboot after a panic
    (panic=0) so a refused capture kernel stays visible; then the scenario's own
    words (boot.cmdline, e.g. lockdown=integrity)."""
    reserve = f"crashkernel={machine.crashkernel_mib}M" if crashkernel else ""
    return " ".join(filter(None, [*arch.kernel_params, reserve, "panic=0", machine.cmdline,
                                  extra]))


def capture_cmdline(machine: MachineConfig, load: LoadStep | None = None, arch: Arch = HOST) -> str:
    """The capture kernel's command line; padded to load.cmdline_length if asked."""
    load = load or LoadStep()
    line = " ".join(filter(None, [*arch.kernel_params, machine.capture_cmdline, load.cmdline]))
    if load.cmdline_length and load.cmdline_length > len(line):
        pad = " kexec_lab_pad="
        line += pad + "x" * max(0, load.cmdline_length - len(line) - len(pad))
    return line


@dataclass
class PairRun:
    """One kernel x scenario pair being run: its guests (a KVM failure falls back to TCG, a
    snapshot that cannot be restored to a fresh boot), its steps, its evidence."""

    lab: LabConfig
    kernel: Kernel
    scenario: Scenario
    chooser: AccelChooser
    progress: Progress
    evidence: dict = field(default_factory=dict)
    session: Session | None = None
    attempts: list = field(default_factory=list)
    cpu_facts: dict = field(default_factory=dict)  # the helper's latest CPU report
    images: dict | None = None  # guest image kind -> signatures (guest_assets manifest)
    save_vmcore: bool = False  # --save-vmcore: makedumpfile in the capture initramfs
    assets: GuestAssets | None = None  # the run's initramfs images, once built
    snapshots: bool = False  # fork from a snapshot of the booted or loaded guest where the scenario can

    def __post_init__(self) -> None:
        self.expectation = PairExpectation(self.lab, self.kernel, self.scenario, self.evidence)

    @cached_property
    def loaded_kernel(self) -> Kernel:
        """The kernel the scenario loads: this one, or load.kernel_from's (pair/reboot.py)."""
        return reboot.loaded_kernel(self.lab, self.kernel, self.scenario, self.progress.say)

    @property
    def arch(self) -> Arch:
        return get_arch(self.kernel.arch)

    def machine_spec(self, accel: Accel, assets: GuestAssets) -> MachineSpec:
        m = self.lab.machine
        smp, maxcpus = resolve_cpus(m, self.scenario)
        return MachineSpec(kernel=self.kernel.bzimage, initrd=assets.primary_initramfs,
                           cmdline=primary_cmdline(m, self.scenario.crashkernel,
                                                   self.scenario.boot_cmdline, self.arch),
                           accel=accel.name, machine_type=m.type,
                           memory_mib=m.memory_mib, smp=smp, maxcpus=maxcpus, tcg_threads=m.tcg_threads,
                           hotplug_memory_mib=self.scenario.hotplug.memory_mib if self.scenario.hotplug else 0,
                           arch=self.arch.name)

    @property
    def expected(self) -> Expected:
        """The scenario's expectation for this kernel (expectation.py); UnknownFact when it
        depends on a fact nothing told."""
        return self.expectation.resolve()

    @property
    def then_intact(self) -> bool:
        return self.expectation.then_intact()

    def attempt(self, spec: MachineSpec, out: Path, t0: float) -> Finding:
        """Boot one guest and take it through the scenario's steps."""
        try:
            return self._attempt(spec, out, t0)
        except InfraError:
            log = out / "qemu.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            if unusable := kvm_unusable(spec.accel, text):
                raise unusable from None
            raise

    def _attempt(self, spec: MachineSpec, out: Path, t0: float) -> Finding:
        try:
            snap = self._snapshot(spec, out, t0)
            if snap is not None:
                try:
                    return self._guest(spec, out, t0, snap)
                except RestoreFailed as exc:
                    self._fresh_after(str(exc), out)
            return self._guest(spec, out, t0, None)
        except PrimaryOops as exc:  # once: a second oops is the answer (no verdict)
            self._fresh_after(str(exc), out, "oops", exc.report.to_json())
            return self._guest(spec, out, t0, None)

    def _guest(self, spec: MachineSpec, out: Path, t0: float, snap: Snapshot | None) -> Finding:
        """One QEMU: booted fresh, or restored from a snapshot of the booted or loaded guest."""
        started = time.monotonic()
        with launched(spec, out / "qemu.log", snap) as machine, \
                opened_session(machine, out, t0, self.lab.timeouts, self.progress) as session:
            self.session = session
            session.save_vmcore_to = out if self.save_vmcore else None
            session.symbols_cache = self.lab.cache_dir / "kallsyms"
            if snap is None:
                return self._steps(session)
            hello, loaded = restore_pair(self, session, snap, started, out)
            self.expectation.learn(session, hello)  # the running kernel's word, as on a boot
            self.take_cpu_facts(hello, spec)
            return self._after_load(session, loaded or self.step_load(session))

    def _snapshot(self, spec: MachineSpec, out: Path, t0: float) -> Snapshot | None:
        """The snapshot this pair forks from (of the loaded guest, or of the booted one when
        the load is under test: snapshot.choose_fork), made now if needed; None: boot fresh."""
        choice = choose_fork(self.scenario, spec, self.snapshots, self.expectation)
        if record := choice.evidence():
            self.evidence["snapshot"] = record
        if choice.fresh:
            return None
        try:
            return obtain(self, spec, None if choice.loads_itself else self.load_inputs(), t0, out)
        except (RestoreFailed, SnapshotUnavailable) as exc:
            self._fresh_after(str(exc), out)
            return None

    def load_inputs(self) -> dict:
        """The load step as it shapes a snapshot (part of its key)."""
        load = self.scenario.load
        return {"method": load.method, "image": load.kernel,
                "capture_cmdline": capture_cmdline(self.lab.machine, load),
                **({"kernel_from": self.loaded_kernel.describe()} if load.kernel_from else {})}

    def prepare_snapshot(self) -> Snapshot:
        """The snapshot this pair would fork from, made now if needed, without running the
        pair (labctl fuzz draws its corruptions from the snapshot's segment table)."""
        assets = build_assets(self.lab.cache_dir, self.kernel.bzimage, bad_images=False)
        accel = self.chooser.choose(self.lab.accel)
        try:
            return obtain(self, self.machine_spec(accel, assets), self.load_inputs(), time.monotonic())
        except KvmUnusable as exc:
            if self.lab.accel != "auto":
                raise LabError(f"KVM cannot run this guest ({exc}); set accel: tcg or auto") from None
            accel = self.chooser.record_failure(str(exc))
            return obtain(self, self.machine_spec(accel, assets), self.load_inputs(), time.monotonic())

    def _fresh_after(self, reason: str, out: Path, kind: str = "snapshot", report: dict | None = None) -> None:
        """A snapshot that could not be made or restored, or a primary kernel that oopsed
        outside kexec (kind "oops", with its report): say so, keep the attempt's logs
        (KIND-attempt-serial.log ...) and its record in result.json's attempts, boot fresh."""
        stopping.check()  # a failure the stop caused is the stop, never a reason to boot again
        keep_attempt_logs(out, kind)
        self.attempts.append({kind: reason, **({"report": report} if report else {})})
        self.evidence["snapshot"] = {"fresh_boot": f"fell back to a fresh boot: {reason}"}
        self.progress.say(f"{reason}; falling back to a fresh boot")
        self.session = None

    # step_boot and step_load are shared with `labctl console` (interactive.py).
    def step_boot(self, session: Session) -> dict:
        hello = session.boot()
        self.evidence["primary"] = {k: hello.get(k) for k in ("release", "crashkernel", "cmdline",
                                                              "system_ram", "sysfs")}
        self.expectation.learn(session, hello)
        self.take_cpu_facts(hello, session.machine.spec)
        return hello

    def take_cpu_facts(self, hello: dict, spec: MachineSpec) -> None:
        """The booted kernel's CPUs; a scenario needing what it lacks (CPUs, options) stops
        here (applicability.after_boot: skipped, or a failure if its config file said otherwise)."""
        self.cpu_facts = hello
        self.evidence["requirements"] = [c.to_json() for c in after_boot(
            needs_for(self.lab, self.scenario), self.arch.name, self.expectation.facts, hello, spec.smp,
            spec.maxcpus or spec.smp)]

    def step_trigger(self, session: Session) -> None:
        """Panic as the scenario says; with several CPUs, watch where and what the others do."""
        if session.machine.spec.smp > 1 or self.scenario.hotplug or self.scenario.trigger_cpu is not None:
            try:
                expected = self.expected
            except UnknownFact:  # judged later as a configuration-class result
                expected = None
            session.cpus = cpu_watch(self.cpu_facts, self.scenario.trigger_cpu, expected,
                                     self.evidence.get("hotplug"))
            if self.scenario.trigger_cpu not in (None, *session.cpus.online):
                raise InfraError(f"the scenario panics on CPU {self.scenario.trigger_cpu}, but this "
                                 f"kernel has CPUs {self.cpu_facts.get('cpus_online')!r} online "
                                 "(a kernel without CONFIG_SMP runs on CPU 0 only)")
        session.trigger(self.scenario.trigger, self.scenario.trigger_cpu)

    def step_load(self, session: Session) -> Loaded:
        load = self.scenario.load
        cmdline = (capture_cmdline(self.lab.machine, load, self.arch) if load.crash
                   else reboot.reboot_cmdline(self.lab.machine, load, self.arch.kernel_params))
        loaded = session.load(cmdline, load.method, load.kernel, crash=load.crash)
        if not load.crash:  # a kexec reboot: the new kernel must show this load's token
            self.evidence["reboot"] = {"token": session.token}
        self.evidence["load"] = {"method": load.method, "image": load.kernel, "crash": load.crash,
                                 **loaded.evidence()}
        if load.kernel_from:
            self.evidence["load"]["kernel_from"] = reboot.describe_loaded(self.loaded_kernel)
        if self.images and load.kernel in self.images:
            self.evidence["load"]["image_facts"] = self.images[load.kernel]
        return loaded

    def step_hotplug(self, session: Session, loaded: Loaded) -> Loaded:
        """Hot-add CPUs and memory after the load, reading the ELF core headers in guest RAM
        before and after; with reload, load again (as user space must where the kernel does
        not describe what was added) and read them once more."""
        hotplug = self.scenario.hotplug
        assert hotplug is not None, "called for a scenario with a hotplug step"
        raw_before = read_headers(session.memory, loaded.table)
        evidence: dict = {"elfcorehdr_before": describe_headers(raw_before)}
        self.evidence["hotplug"] = evidence
        if hotplug.cpus:
            cpus, self.cpu_facts = hot_add_cpus(session, hotplug.cpus, session.machine.spec.smp)
            evidence.update(cpus)
            if session.machine.spec.accel == "tcg":
                evidence["platform"] = ("VMware identity under TCG, so that the kernel counts QEMU's "
                                        "hotpluggable CPUs (machine.x86_tcg_cpu_hotplug_args)")
        if hotplug.memory_mib:
            evidence["memory"] = hot_add_memory(session, hotplug.memory_mib)
        raw_after = read_headers(session.memory, loaded.table)
        evidence["elfcorehdr_after"] = after = describe_headers(raw_after)
        evidence["elfcorehdr_changed"] = after.get("sha256") != evidence["elfcorehdr_before"].get("sha256")
        evidence["elfcorehdr_bytes_changed"] = bytes_changed(raw_before, raw_after)
        self.progress.say(f"elfcorehdr {'changed' if evidence['elfcorehdr_changed'] else 'unchanged'} "
                          f"since the load ({after.get('pt_load')} PT_LOAD, {after.get('pt_note')} PT_NOTE)")
        if hotplug.reload:
            loaded = self.step_load(session)
            evidence["elfcorehdr_reloaded"] = headers_facts(session.memory, loaded.table)
        return loaded

    def step_recovery(self, session: Session) -> dict:
        """After a load that was refused (or accepted and left alone): is the guest still
        healthy?  A valid load and an intact crash must boot the capture kernel."""
        self.progress.say("checking the guest is still healthy: valid load, then an intact crash")
        loaded = session.load(capture_cmdline(self.lab.machine, arch=self.arch))
        if loaded.rejected:
            return {"outcome": Outcome.LOAD_REJECTED, "load": loaded.evidence()}
        session.trigger("sysrq")
        finding = session.observe(loaded.table, self.kernel.release)
        return {"outcome": finding.outcome, **finding.evidence}

    def _steps(self, session: Session) -> Finding:
        self.step_boot(session)
        return self._after_load(session, self.step_load(session))

    def _after_load(self, session: Session, loaded: Loaded) -> Finding:
        if loaded.rejected or self.scenario.trigger == "none":
            message = loaded.message
            finding = Finding(Outcome.LOAD_REJECTED if loaded.rejected else Outcome.LOAD_ACCEPTED,
                              {k: message.get(k) for k in ("rc", "errno", "strerror")})
            if self.then_intact:
                self.evidence["recovery"] = self.step_recovery(session)
            return finding
        if self.scenario.trigger == "kexec-reboot":
            return reboot.run_reboot(self, session, loaded.table)
        if self.scenario.hotplug:
            loaded = self.step_hotplug(session, loaded)
        if self.scenario.corrupt:
            self.evidence["corruption"] = session.corrupt(loaded.table, self.scenario.corrupt)
        if self.scenario.load.unload:
            self.evidence["unload"] = session.unload(self.scenario.load.method)
        self.step_trigger(session)
        finding = session.observe(loaded.table, self.kernel.release)
        if self.scenario.load.kernel_from:
            finding.evidence["loaded_kernel"] = reboot.describe_loaded(self.loaded_kernel)
        if self.scenario.corrupt and finding.outcome in (Outcome.CAPTURE_BOOTED, Outcome.CAPTURE_PANICKED):
            self.evidence["corruption"].update(corruption_at_verdict(session, self.evidence["corruption"]))
        return finding

    def run(self, out: Path, t0: float) -> tuple[Accel, Finding]:
        """Run on the chosen accelerator; under `auto`, a KVM that fails falls back to TCG."""
        if self.scenario.userland == "debian":  # the distribution's kdump stack (distro.py)
            accel = choose_accel(self.chooser, self.lab.accel, self.arch)
            return accel, distro.run(self, accel, out, t0)
        self.progress.say("preparing guest assets")
        image = self.scenario.load.kernel
        assets = build_assets(self.lab.cache_dir, self.loaded_kernel.capture_image,
                              bad_images=image in BAD_IMAGES, signed_images=image in SIGNED_IMAGES,
                              sign_default="lab" in (self.expectation.trusted_keys or ()),
                              dump_tools=self.save_vmcore, arch=self.arch,
                              modules=reboot.guest_modules(self.kernel, self.loaded_kernel))
        self.images, self.assets = assets.images, assets
        accel = choose_accel(self.chooser, self.lab.accel, self.arch)
        self.progress.say(f"accelerator {accel.name}: {accel.reason}")
        try:
            return accel, self.attempt(self.machine_spec(accel, assets), out, t0)
        except KvmUnusable as exc:
            if self.lab.accel != "auto":
                raise LabError(f"KVM cannot run this guest ({exc}); set accel: tcg or auto") from None
            keep_attempt_logs(out, "kvm")
            self.attempts.append({"accel": "kvm", "failure": str(exc)})
            accel = self.chooser.record_failure(str(exc))
            self.progress.say(accel.reason)
            self.session = None
            return accel, self.attempt(self.machine_spec(accel, assets), out, t0)


def keep_attempt_logs(out: Path, kind: str) -> None:
    """A failed attempt's logs renamed KIND-attempt-NAME, so the next attempt writes its own."""
    for name in EVIDENCE_LOGS:
        if (out / name).exists():
            (out / name).rename(out / f"{kind}-attempt-{name}")


def corruption_at_verdict(session: Session, corruption: dict) -> dict:
    """Were the corrupted bytes still there when a capture kernel ran?  Where nothing moved
    the image (arm64's Image runs where it was loaded), this shows that the corrupted bytes
    themselves were entered, not a copy purgatory had checked."""
    address, length = int(corruption["address"], 16), corruption["length"]
    now = session.memory.read(address, length).hex()
    return {"at_verdict": now, "still_corrupted": now == corruption["written"]}


def choose_accel(chooser: AccelChooser, requested: str, arch: Arch) -> Accel:
    """KVM runs only the host's own architecture: another one is always TCG."""
    if arch is HOST:
        return chooser.choose(requested)
    if requested == "kvm":
        raise LabError(f"accel: kvm cannot run an {arch.name} guest on this {HOST.name} host; "
                       "set accel: auto or tcg")
    return Accel("tcg", f"{arch.name} guest on an {HOST.name} host: TCG")


def known_failure(lab: LabConfig, kernel: Kernel, scenario: Scenario) -> str | None:
    """Why lab.yaml says this kernel fails this scenario (its expect_fail), if it does."""
    entry = lab.kernels.get(kernel.name)
    return entry.expect_fail.get(scenario.name) if entry else None


def failure_note(why: str, named: tuple[str, ...], passed: bool, outcome: str) -> tuple[str, str]:
    """For a pair lab.yaml's expect_fail lists: unexpected_pass, expected_failure (one of
    the outcomes it names), or unexpected_failure (another failure: a plain FAIL)."""
    if passed:
        return "unexpected_pass", why
    if outcome in named:
        return "expected_failure", why
    return "unexpected_failure", f"expect_fail names {', '.join(named)}, not {outcome}"


def run_pair(lab: LabConfig, kernel: Kernel, scenario: Scenario, run_id: str,
             chooser: AccelChooser, quiet: bool = False, save_vmcore: bool = False,
             fresh: bool = False) -> PairResult:
    """Run one pair and always leave a result.json behind.  Unless `fresh`, a scenario
    that can fork from a snapshot of the loaded guest does (snapshot.py)."""
    out = pair_dir(lab.artifacts_dir, run_id, kernel.name, scenario.name)
    progress = Progress(f"{kernel.name}/{scenario.name}", quiet=quiet)
    pair = PairRun(lab, kernel, scenario, chooser, progress, save_vmcore=save_vmcore,
                   snapshots=not fresh)
    t0 = time.monotonic()
    try:
        expected = pair.expected
    except UnknownFact:  # perhaps the running kernel will tell
        expected = None
    result = PairResult(run_id, scenario={"name": scenario.name, "path": str(scenario.path),
                                          "description": scenario.description,
                                          "corrupt": scenario.corrupt is not None},
                        kernel=kernel.describe(), expected=expected.outcome if expected else None,
                        expected_errno=expected.errno if expected else None,
                        expectation_reason=expected.reason if expected else None,
                        evidence=pair.evidence, attempts=pair.attempts, directory=out)
    try:
        if skipped_pair(lab, kernel, scenario, result):  # no guest for a pair that cannot apply
            return result
        accel, finding = pair.run(out, t0)
        result.attach(out, finding.attachments)
        try:
            expected = pair.expected
        except UnknownFact as exc:  # a configuration-class result, never a FAIL
            pair.evidence["verdict"] = finding.evidence
            result.accelerator, result.outcome = accel.to_json(), Outcome.CONFIG_ERROR
            result.extra["observed"] = finding.outcome
            result.reason = f"{exc} (the run's outcome was {finding.outcome})"
            return result
        result.expected, result.expected_errno = expected.outcome, expected.errno
        result.expectation_reason = expected.reason
        passed, reason = judge(expected.outcome, finding.outcome, finding.evidence,
                               expected.errno, pair.evidence.get("recovery"), expected.cause)
        pair.evidence["verdict"] = finding.evidence
        result.accelerator, result.outcome = accel.to_json(), finding.outcome
        result.passed, result.reason = passed, reason
        if why := known_failure(lab, kernel, scenario):
            named = lab.kernels[kernel.name].expect_fail_outcomes.get(scenario.name, ())
            key, note = failure_note(why, named, passed, finding.outcome)
            result.extra[key] = note
            if key == "unexpected_failure":  # a failure, but not the one the catalogue names
                result.reason += f" (not the failure expect_fail names: {', '.join(named)})"
    except (KeyboardInterrupt, Interrupted):
        phase = pair.session.phase if pair.session else "preparing"
        result.outcome, result.reason = Outcome.INTERRUPTED, f"interrupted while {phase}"
        result.extra["phase"] = phase
        raise Interrupted(f"interrupted while {phase}; partial results in {out}") from None
    except NotApplicable as exc:  # the booted kernel lacks what the scenario needs
        pair.evidence["requirements"] = [c.to_json() for c in exc.checks]
        if isinstance(exc, RequirementUnmet):  # though its config file said it had it: a failure
            result.outcome, result.passed, result.reason = Outcome.REQUIREMENT_UNMET, False, str(exc)
        else:
            result.outcome, result.passed, result.reason = Outcome.SKIPPED, None, f"does not apply: {exc}"
    except ConfigError as exc:
        if exc.key and not exc.path:  # found on the guest: name the scenario's file and line
            exc = key_error(scenario.path, exc.key, str(exc))
        result.outcome, result.reason = Outcome.CONFIG_ERROR, str(exc)
    except (LabError, OSError) as exc:  # OSError: a socket or the disk failed under the lab
        phase = pair.session.phase if pair.session else "preparing"
        if stop := stopping.requested():  # a failure the stop itself caused
            result.outcome, result.reason = Outcome.INTERRUPTED, f"interrupted while {phase}"
            result.extra["phase"] = phase
            raise Interrupted(f"{stop} while {phase}; partial results in {out}") from None
        result.outcome, result.reason = Outcome.INFRA_ERROR, str(exc)
        result.extra["phase"] = phase
    finally:
        progress.done()
        if pair.session:
            result.timings = {**pair.session.timings}
        result.timings["total"] = round(time.monotonic() - t0, 3)
        try:
            result.write()
        except OSError as exc:  # the disk filled up (or went away) during the run
            raise InfraError(f"could not write {out / 'result.json'}: {exc.strerror}") from None
    return result
