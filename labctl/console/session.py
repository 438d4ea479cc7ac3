"""`labctl console`: a scenario run that stops for a person at the guest's serial console.

The lab runs the scenario's steps up to --stop-at (LiveGuest drives the stages
through the same PairRun/Session steps `labctl run` uses), then hands the
terminal over (console/terminal.py): keystrokes go to the guest's ttyS0 and its
output comes back, while the console still goes to serial.log with host
timestamps and the control channel (ttyS1) stays with the lab.  Ctrl-] opens
the lab prompt, whose commands (console/prompt.py) act on the LiveGuest.  However
the session ends, the Machine context manager stops QEMU and removes the run
directory.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from labctl.artifacts import check_writable, new_run_id, pair_dir
from labctl.config.options import add_common_opts, lab_from_args
from labctl.config.schema import Corruption, Expected, find_scenario, load_scenario
from labctl.console import prompt as lab_prompt
from labctl.console.prompt import PromptCommands, Speaker, UsageError
from labctl.console.terminal import Tee, Terminal, TerminalBridge
from labctl.errors import ConfigError, Interrupted, LabError
from labctl.evidence import purgatory
from labctl.evidence.applicability import first_unmet
from labctl.evidence.purgatory import Placement
from labctl.evidence.segments import SegmentTable
from labctl.evidence.verdict import judge
from labctl.guest.accel import AccelChooser
from labctl.guest.console import StampedLog
from labctl.kernel.facts import UnknownFact
from labctl.kernel.providers import resolve_kernel
from labctl.pair.applies import before_boot
from labctl.pair.runner import PairRun
from labctl.pair.steps import REGISTER_SAMPLE_SECONDS, Finding, Loaded, Session
from labctl.progress import Progress, say
from labctl.result import LOGS, Outcome, PairResult

STAGES = ("booted", "loaded", "corrupted", "panicked")
DEFAULT_GDB_PORT = 1234
SYMBOLS = "purgatory.ro"  # the kernel's purgatory object, next to the run's other artifacts
# A `verdict` watches this long: two register samples must agree for purgatory-refused.
SNAPSHOT_SECONDS = 3 * REGISTER_SAMPLE_SECONDS


class CtrlC:
    """While waiting at the prompt, Ctrl-C only ends the wait: the handler notes it and the
    wait loop looks between its bounded windows (a QMP exchange is never cut in half)."""

    def __init__(self) -> None:
        self.pressed = False
        self.previous = signal.getsignal(signal.SIGINT)

    def _hit(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.pressed = True

    def __enter__(self) -> "CtrlC":
        self.previous = signal.signal(signal.SIGINT, self._hit)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self.previous)


class LiveGuest:
    """One guest under a person's hands: the stages it went through (the scenario's steps,
    by hand or as `labctl run` takes them) and the evidence so far."""

    def __init__(self, pair: ConsolePair, session: Session, speaker: Speaker):
        self.pair, self.session, self.speaker = pair, session, speaker
        self.say = speaker.say
        self.stage: str | None = None
        self.loaded: Loaded | None = None
        self.finding: Finding | None = None
        self.snapshot: dict = {}  # the last `verdict` that found no evidence yet
        self.placement: Placement | None = None
        self.placement_searched = False

    def table(self) -> SegmentTable:
        return self.loaded.table if self.loaded else SegmentTable(())

    def reached(self, stage: str) -> bool:
        return self.stage is not None and STAGES.index(self.stage) >= STAGES.index(stage)

    # ------------------------------------------------------------ steps
    def boot(self) -> None:
        self.pair.step_boot(self.session)
        self.stage = "booted"
        self.show_gdb()

    def load(self) -> Loaded:
        if self.loaded:
            raise UsageError("already loaded; `segments` shows the table")
        self.loaded = loaded = self.pair.step_load(self.session)
        self.stage = "loaded"
        if loaded.rejected:
            self.finding = self._load_finding(Outcome.LOAD_REJECTED)
        elif self.pair.scenario.hotplug:
            loaded = self.loaded = self.pair.step_hotplug(self.session, loaded)
        self.show_gdb()
        return loaded

    def _load_finding(self, outcome: str) -> Finding:
        assert self.loaded is not None, "after the load step"
        return Finding(outcome, {k: self.loaded.message.get(k) for k in ("rc", "errno", "strerror")})

    def corrupt(self, corruption: Corruption) -> dict:
        if not self.loaded or self.loaded.rejected:
            raise UsageError("nothing is loaded to corrupt; `load` first")
        if self.reached("panicked"):
            raise UsageError("the guest has panicked already; purgatory has run its check")
        evidence = self.session.corrupt(self.loaded.table, corruption)
        self.pair.evidence.setdefault("corruptions", []).append(evidence)
        self.stage = "corrupted"
        return evidence

    def panic(self, trigger: str | None) -> None:
        if self.reached("panicked"):
            raise UsageError("the guest has panicked already; `verdict` says what came of it")
        if trigger is None and self.pair.scenario.trigger != "none":
            self.pair.step_trigger(self.session)  # the scenario's own, on its CPU if it names one
        else:
            self.session.trigger(trigger or self.pair.default_trigger)
        self.stage = "panicked"

    def scenario_panic(self) -> None:
        """The scenario's own ending: unload first if it says so, then its trigger."""
        scenario = self.pair.scenario
        if scenario.load.unload:
            self.pair.evidence["unload"] = self.session.unload(scenario.load.method)
        self.panic(None)

    def advance(self, until: str | None) -> None:
        """Run the scenario's steps past the current stage, up to `until` (None: all of them)."""
        scenario, corruption = self.pair.scenario, self.pair.scenario.corrupt
        plan = (("booted", self.boot), ("loaded", self.load),
                ("corrupted", (lambda: self.corrupt(corruption)) if corruption else None),
                ("panicked", self.scenario_panic if scenario.trigger != "none" else None))
        for stage, step in plan:
            if self.finding:
                return
            if step and not self.reached(stage):
                step()
            if stage == until:
                return

    # ------------------------------------------------------------ evidence
    def _capture_hello(self) -> dict | None:
        return next((m for m in self.session.control.messages
                     if m["type"] == "hello" and m.get("role") == "capture"), None)

    def observe(self, within: float | None = None) -> Finding:
        """Session.observe, the evidence logic of `labctl run`, for at most `within` seconds
        more (None: up to the verdict timeout).  The capture kernel's hello may already
        have been read by the terminal loop, so the control messages are checked first."""
        self.session.control.pump(strict=False)
        if hello := self._capture_hello():
            return self.session.capture_booted(hello, self.pair.kernel.release, self.table())
        return self.session.observe(self.table(), self.pair.kernel.release, within)

    def verdict_now(self) -> Finding | None:
        """The outcome `labctl run` would declare: waits for the evidence up to the verdict
        timeout (as `labctl run` does), with a live line; Ctrl-C goes back to the prompt."""
        if self.finding or not self.reached("panicked"):
            return self.finding
        with CtrlC() as ctrl_c:
            while not ctrl_c.pressed:
                finding = self.observe(within=SNAPSHOT_SECONDS)
                if finding.outcome != Outcome.NO_VERDICT:
                    print("\r\033[K", end="", flush=True)
                    return finding
                self.snapshot = finding.evidence
                print("\r\033[K" + self._waiting_line(), end="", flush=True)
        print("\r\033[K", end="", flush=True)
        return None

    def _waiting_line(self) -> str:
        since = time.monotonic() - self.session.marks.get("trigger", time.monotonic())
        where = ", ".join(f"CPU#{v['cpu']} RIP={v['rip']} in {v['segment'] or 'no segment'}"
                          for v in self.snapshot.get("vcpus", []))
        return (f"waiting for evidence: {since:.1f} s since the panic (verdict timeout "
                f"{self.session.timeouts.verdict:g} s){'; ' + where if where else ''}; Ctrl-C: back to the prompt")

    def run_rest(self) -> None:
        """`continue`: the remaining steps, then wait for the verdict as `labctl run` does."""
        self.advance(None)
        if self.finding is None and not self.reached("panicked"):  # trigger: none
            self.finding = self._load_finding(Outcome.LOAD_ACCEPTED)
        if self.finding is None:
            self.finding = self.observe()
        elif self.finding.outcome in (Outcome.LOAD_REJECTED, Outcome.LOAD_ACCEPTED) and self.pair.then_intact:
            self.pair.evidence["recovery"] = self.pair.step_recovery(self.session)
        self.report(self.finding)

    def report(self, finding: Finding | None) -> None:
        if finding is None:
            since = time.monotonic() - self.session.marks.get("trigger", time.monotonic())
            where = "the guest has not panicked" if not self.reached("panicked") else \
                f"{since:.1f} s since the panic, no evidence yet"
            self.say(f"no verdict yet ({where}; stage {self.stage})")
            for vcpu in self.snapshot.get("vcpus", []) if self.reached("panicked") else []:
                self.say(f"  CPU#{vcpu['cpu']} {self.session.arch.pc_name}={vcpu['rip']} in "
                         f"{vcpu['segment'] or 'no segment'}")
            return
        self.finding = finding
        passed, reason = self.pair.judge(finding)
        self.say(f"verdict: {finding.outcome} (scenario expects {self.pair.expected.outcome}: "
                 f"{'PASS' if passed else 'FAIL' if passed is False else 'UNKNOWN'}: {reason})")
        self.say("evidence: " + json.dumps(finding.evidence, indent=2))

    def after_exit(self) -> None:
        """QEMU exited: after the panic that is evidence (guest-reset), say what it means."""
        if self.reached("panicked") and not self.finding:
            self.report(self.observe())

    # ------------------------------------------------------------ purgatory and gdb
    def purgatory(self) -> Placement | None:
        """Where this load put purgatory (found once, then kept); None before a load.  The
        kernel's purgatory object is saved as purgatory.ro for gdb's add-symbol-file."""
        if not self.placement_searched and self.loaded and not self.loaded.rejected:
            self.placement_searched = True
            obj = None
            if self.pair.scenario.load.method == "kexec_file_load":  # kexec_load: kexec-tools' own
                obj = purgatory.find_in_memory(self.session.memory, self.session.arch)
            if obj:
                (self.pair.out / SYMBOLS).write_bytes(obj)
            self.placement = purgatory.locate(self.loaded.table, obj)
        return self.placement

    def show_gdb(self) -> None:
        if self.pair.gdb_port is None:
            return
        symbols = self.pair.out / SYMBOLS
        self.say(purgatory.gdb_hint(self.pair.gdb_port, self.purgatory(),
                                    symbols.resolve() if symbols.exists() else None,
                                    loaded=self.loaded is not None, arch=self.session.arch))

@dataclass
class ConsolePair(PairRun):
    """A PairRun whose steps stop for a person; reuses its machine, channels and KVM fallback."""

    stop_at: str = "loaded"
    gdb_port: int | None = None
    out: Path = Path()  # the pair's artifacts directory (cmd_console sets it)
    t0: float = 0.0  # the run's clock, shared by serial.log, control.log and lab.log
    live: LiveGuest | None = None

    @property
    def expected(self) -> Expected:
        """Resolved again once the running kernel told its facts (an image without a config)."""
        try:
            return super().expected
        except UnknownFact as exc:
            return Expected("unknown", None, str(exc))

    @property
    def default_trigger(self) -> str:
        """`panic` without an argument: the scenario's trigger, or sysrq if it has none."""
        return self.scenario.trigger if self.scenario.trigger != "none" else "sysrq"

    def judge(self, finding: Finding) -> tuple[bool | None, str]:
        """The same judgement `labctl run` makes, against this kernel's expectation
        (None: the expectation is unknown for this kernel, never a FAIL)."""
        expected = self.expected
        if expected.outcome == "unknown":
            return None, expected.reason
        return judge(expected.outcome, finding.outcome, finding.evidence, expected.errno,
                     self.evidence.get("recovery"), expected.cause)

    def machine_spec(self, accel, assets):
        return replace(super().machine_spec(accel, assets), gdb_port=self.gdb_port)

    def _steps(self, session: Session) -> Finding | None:  # type: ignore[override]
        """None: the person ended the session before a verdict (run_console records that)."""
        terminal = Terminal(sys.stdin.fileno())
        session.console.spawn.logfile_read = Tee(session.console.log, sys.stdout)
        transcript = StampedLog(self.out / "lab.log", self.t0)  # same clock as serial.log
        speaker = Speaker(transcript)
        self.live = live = LiveGuest(self, session, speaker)
        try:
            live.advance(self.stop_at)
            TerminalBridge(live, PromptCommands(live, speaker), terminal, speaker).serve()
            return live.finding
        finally:
            terminal.restore()
            transcript.close()


def record(result: PairResult, finding: Finding | None, pair: ConsolePair) -> None:
    """Put the session's last verdict (if any) into the result."""
    if finding is None:
        result.outcome, result.passed = Outcome.NO_VERDICT, None
        result.reason = "the session ended before the lab reached a verdict"
        return
    result.attach(pair.out, finding.attachments)
    passed, reason = pair.judge(finding)
    result.evidence["verdict"] = finding.evidence
    if passed is None:  # expectation unknown: a configuration-class result
        result.outcome, result.passed, result.reason = Outcome.CONFIG_ERROR, None, reason
        result.extra["observed"] = finding.outcome
        return
    result.outcome, result.passed, result.reason = finding.outcome, passed, reason


def run_console(pair: ConsolePair, run_id: str) -> int:
    """Run the session and always leave result.json (mode: console) behind."""
    out, t0 = pair.out, time.monotonic()
    pair.t0 = t0
    result = PairResult(run_id, scenario={"name": pair.scenario.name, "path": str(pair.scenario.path)},
                        kernel=pair.kernel.describe(), expected=pair.expected.outcome,
                        expected_errno=pair.expected.errno,
                        expectation_reason=pair.expected.reason, evidence=pair.evidence,
                        attempts=pair.attempts, artifacts={**LOGS, "lab_log": "lab.log"},
                        extra={"mode": "console", "stop_at": pair.stop_at}, directory=out)
    try:
        accel, finding = pair.run(out, t0)
        result.accelerator = accel.to_json()
        record(result, finding, pair)
    except (KeyboardInterrupt, Interrupted):
        if pair.live and pair.live.finding:  # a verdict reached before Ctrl-C still counts
            record(result, pair.live.finding, pair)
        else:
            result.outcome, result.reason = Outcome.INTERRUPTED, f"interrupted at stage {_stage(pair)}"
        result.extra["ended_by"] = "interrupt"
        raise Interrupted(f"session ended at stage {_stage(pair)}; artifacts in {out}") from None
    except LabError as exc:
        result.outcome = Outcome.CONFIG_ERROR if isinstance(exc, ConfigError) else Outcome.INFRA_ERROR
        result.reason = str(exc)
        result.extra["stage"] = _stage(pair)
        raise
    finally:
        if pair.session:
            result.timings = {**pair.session.timings}
        result.timings["total"] = round(time.monotonic() - t0, 3)
        result.write()
    print(f"session ended: {result.outcome}; artifacts: {out}", flush=True)
    return result.exit_code


def _stage(pair: ConsolePair) -> str:
    return (pair.live.stage if pair.live else None) or "starting"


def cmd_console(args: argparse.Namespace) -> int:
    lab = lab_from_args(args)
    scenario = load_scenario(find_scenario(args.scenario, lab.scenarios_dir))
    if args.stop_at == "corrupted" and scenario.corrupt is None:
        raise ConfigError(f"--stop-at corrupted: scenario {scenario.name} has no corrupt step "
                          "(stop at loaded and use `corrupt ROLE` at the lab prompt)")
    if scenario.trigger == "kexec-reboot":
        raise ConfigError(f"scenario {scenario.name} is a kexec reboot, which `labctl console` does "
                          "not drive yet: use `labctl run`")
    check_writable(lab.artifacts_dir)
    kernel = resolve_kernel(lab, args.kernel, progress=say)
    if unmet := first_unmet(before_boot(lab, kernel, scenario) or []):  # no guest for nothing
        raise ConfigError(f"{scenario.name} does not apply to {kernel.name}: {unmet.reason}")
    run_id = new_run_id()
    out = pair_dir(lab.artifacts_dir, run_id, kernel.name, scenario.name)
    pair = ConsolePair(lab, kernel, scenario, AccelChooser(lab.cache_dir),
                       Progress(f"{kernel.name}/{scenario.name}", live=False), stop_at=args.stop_at,
                       gdb_port=args.gdb, out=out, save_vmcore=args.save_vmcore)
    say(f"console session {run_id}: {kernel.name} x {scenario.name}, stopping at "
             f"{args.stop_at}; {lab_prompt.ESCAPE_NAME} then `help` for the lab prompt")
    return run_console(pair, run_id)


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1..65535, got {port}")
    return port


def register(subparsers) -> None:
    console = subparsers.add_parser(
        "console", help="run a scenario up to a stop point, then debug it by hand on the serial "
                        f"console ({lab_prompt.ESCAPE_NAME} opens the lab prompt)")
    console.add_argument("scenario", help="scenario name (scenarios/NAME.yaml) or path")
    console.add_argument("--kernel", help="catalogue name or path to a bzImage (default: lab.yaml's)")
    console.add_argument("--stop-at", choices=STAGES, default="loaded",
                         help="the last scenario step to run before handing over (default: loaded)")
    console.add_argument("--gdb", nargs="?", const=DEFAULT_GDB_PORT, type=_port, metavar="PORT",
                         help=f"QEMU gdbstub on 127.0.0.1:PORT (default {DEFAULT_GDB_PORT}); "
                              "the lab prints the gdb command line")
    console.add_argument("--save-vmcore", action="store_true",
                         help="keep a filtered, compressed dump (makedumpfile -c -d 23) as 'vmcore' "
                              "in the artifacts when the verdict is a capture")
    add_common_opts(console)
    console.set_defaults(func=cmd_console)
