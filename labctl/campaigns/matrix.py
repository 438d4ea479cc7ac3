"""labctl matrix: every selected kernel x scenario pair, N guests at a time, stably sharded.

Each pair runs as its own `python -m labctl run` child process, never a thread:
Machine starts QEMU with Popen(preexec_fn=...), which is not thread-safe, and
signals are handled in a main thread.  A pair that ends in an infrastructure
error is retried once (the first attempt is kept under attempt-1/ and recorded
in result.json); a verdict mismatch is never retried.  The shard of a pair is a
hash of "kernel/scenario", so adding a scenario never moves the others.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from labctl.artifacts import check_writable, new_run_id, safe_component, write_json
from labctl.config.options import add_common_opts, lab_from_args, positive_int
from labctl.config.schema import LabConfig, find_scenario, load_scenario
from labctl.errors import ConfigError, Interrupted
from labctl.kernel.image import Kernel
from labctl.kernel.providers import PACKAGE_PINS_ENV, resolve_kernel
from labctl.pair.applies import skipped_result
from labctl.progress import LIVE_SECONDS, LiveStatus, say
from labctl.report.diff import Run, load_run, write_with_baseline
from labctl.report.render import ATTEMPT_PREFIX, STATUS_LABELS, Cell, counts, exit_code, write_reports
from labctl.result import Outcome, PairResult

RETRY_OUTCOMES = {Outcome.INFRA_ERROR}
HEARTBEAT_SECONDS = 15.0
LOG_TAIL_BYTES = 2048
PROGRESS_PREFIX = re.compile(r"^\[\s*[\d.]+s\] [^:]*: ")  # "[  12.3s] kernel/scenario: "
POLL_SECONDS = 0.05  # how soon a finished pair frees its job slot
STOP_GRACE_SECONDS = 30.0
CHILD_LOG = "labctl-run.log"
WATCHDOG_MARGIN_SECONDS = 120.0


@dataclass(frozen=True)
class Pair:
    kernel: str
    scenario: str
    path: Path
    expect_fail: str | None = None
    weight: int = 1  # guest work it is likely to take (weight_of): heavier pairs start first


    @property
    def key(self) -> str:
        return f"{self.kernel}/{self.scenario}"


def shard_of(key: str, count: int) -> int:
    """1-based shard of a pair: stable across runs, machines and Python versions."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % count + 1


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' with 1 <= I <= N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 1/4") from None
    if not 1 <= index <= count:
        raise ConfigError(f"--shard {text!r}: I must be between 1 and N")
    return index, count


def run_id_arg(text: str) -> str:
    """A run id given on the command line must be one safe path component."""
    if safe_component(text) != text:
        raise argparse.ArgumentTypeError(f"{text!r}: use letters, digits, '.', '_', '+', '-'")
    return text


def _names(values: list[str] | None, option: str = "") -> list[str]:
    """Accept both `--kernels a b` and `--kernels a,b`; a name given twice counts once
    (a selection is a set, kept in the order given).  An option given with only empty
    names (`--scenarios ""`, an empty variable in CI) is an error, not "all"."""
    names = list(dict.fromkeys(n.strip() for v in values or [] for n in v.split(",") if n.strip()))
    if values and not names and option:
        raise ConfigError(f"{option} names nothing ({' '.join(map(repr, values))}); give at least one "
                          "name, or leave the option out for all")
    return names


def scenario_paths(names: list[str], scenarios_dir: Path) -> list[Path]:
    """The scenario files named, each once: a name and a path to the same file (or two
    globs matching it) are one scenario; two different files with one name would share a
    pair directory, so they are refused."""
    paths: dict[Path, str] = {}
    for name in names:
        paths.setdefault(find_scenario(name, scenarios_dir).resolve(), name)
    stems: dict[str, Path] = {}
    for path in paths:
        if (other := stems.setdefault(path.stem, path)) != path:
            raise ConfigError(f"two scenarios named {path.stem!r}: {other} and {path}; results are "
                              "kept per scenario name, so rename one or select only one")
    return list(paths)


def weight_of(scenario) -> int:
    """A rough rank of how much guest work a scenario takes, for starting the longest
    pairs first (a long pair started last leaves the other job slots idle at the end):
    a fresh boot with hotplug, then a load followed by an intact crash (then_intact), then
    a crash of an intact capture kernel (a capture boot), then the rest (a refusal,
    a rejected load); a Debian guest's systemd boots (userland debian) outweigh them all."""
    if scenario.userland == "debian":
        return 5
    if scenario.hotplug:
        return 4
    if scenario.then_intact:
        return 3
    return 2 if scenario.corrupt is None and scenario.trigger != "none" else 1


def schedule(pairs: list[Pair]) -> list[Pair]:
    """The order pairs start in: heaviest first, else as selected (stable)."""
    return sorted(pairs, key=lambda p: -p.weight)


def select_pairs(lab: LabConfig, scenarios_dir: Path, kernels: list[str] | None = None,
                 scenarios: list[str] | None = None, shard: tuple[int, int] = (1, 1)) -> list[Pair]:
    """Kernel x scenario pairs in this shard; every scenario file is validated first."""
    kernel_names = _names(kernels, "--kernels") or sorted(lab.kernels)
    unknown = [k for k in kernel_names if k not in lab.kernels]
    if unknown:
        raise ConfigError(f"{lab.path}: unknown kernel {unknown[0]!r} (catalogue: "
                          f"{', '.join(sorted(lab.kernels))})")
    paths = scenario_paths(_names(scenarios, "--scenarios"), scenarios_dir) or \
        sorted(scenarios_dir.glob("*.yaml"))
    loaded = [load_scenario(p) for p in paths]
    pairs = []
    for kernel in kernel_names:
        expect_fail = getattr(lab.kernels[kernel], "expect_fail", None) or {}
        for scenario in loaded:
            pair = Pair(kernel, scenario.name, scenario.path.resolve(),
                        expect_fail.get(scenario.name), weight_of(scenario))
            if shard_of(pair.key, shard[1]) == shard[0]:
                pairs.append(pair)
    return pairs


def scope_baseline(base: Run, pairs: list[Pair], kernels: list[str] | None, scenarios: list[str] | None,
                   shard: tuple[int, int]) -> Run:
    """The baseline's pairs that this selection could have run (its kernels, scenarios and
    shard), so a narrower run does not list the rest as removed; without --kernels or
    --scenarios a deleted scenario or kernel still shows as removed."""
    names = set(_names(kernels))
    chosen = {p.scenario for p in pairs}
    return Run(base.label, [c for c in base.cells
                            if (not names or c.kernel in names) and (not scenarios or c.scenario in chosen)
                            and shard_of(f"{c.kernel}/{c.scenario}", shard[1]) == shard[0]])


# ---------------------------------------------------------------- CI job matrices

def shard_jobs(all_pairs: list[Pair], shards: int) -> list[dict]:
    """One job per kernel x non-empty shard."""
    jobs: dict[tuple[str, int], int] = {}
    for pair in all_pairs:
        key = (pair.kernel, shard_of(pair.key, shards))
        jobs[key] = jobs.get(key, 0) + 1
    return [{"kernel": k, "shard": s, "shards": shards, "pairs": n}
            for (k, s), n in sorted(jobs.items())]


def emit_github(all_pairs: list[Pair], shards: int) -> dict:
    """For `strategy.matrix: ${{ fromJSON(...) }}`."""
    return {"include": shard_jobs(all_pairs, shards)}


def emit_gitlab(all_pairs: list[Pair], shards: int) -> dict:
    """A child pipeline: the shard and merge jobs of .gitlab/lab-jobs.yml with a
    `parallel: matrix:` over kernel x shard."""
    by_kernel: dict[str, list[str]] = {}
    for job in shard_jobs(all_pairs, shards):
        by_kernel.setdefault(job["kernel"], []).append(f"{job['shard']}/{job['shards']}")
    matrix = [{"KERNEL": k, "SHARD": s} for k, s in by_kernel.items()]
    return {"include": [{"local": ".gitlab/lab-jobs.yml"}],
            "lab-shard": {"extends": ".lab-shard", "parallel": {"matrix": matrix}},
            "lab-merge": {"extends": ".lab-merge", "needs": ["lab-shard"]}}


# ---------------------------------------------------------------- running

@dataclass
class Running:
    pair: Pair
    attempt: int
    process: subprocess.Popen
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    watchdog: bool = False  # stopped by the matrix for taking too long


@dataclass
class MatrixRun:
    """Runs pairs as child processes, at most `jobs` at a time."""

    lab: LabConfig
    run_id: str
    jobs: int
    accel: str | None = None
    shard: str = "1/1"
    pins: dict[str, list[str]] = field(default_factory=dict)
    pair_timeout: float | None = None
    fresh: bool = False  # every pair boots cold (no snapshots)
    kernels: dict[str, Kernel] = field(default_factory=dict)  # resolved: pairs that cannot apply skip
    stream: TextIO = sys.stderr
    t0: float = field(default_factory=time.monotonic)
    running: list[Running] = field(default_factory=list)
    retries: dict[str, list] = field(default_factory=dict)
    done: list[Cell] = field(default_factory=list)
    live: LiveStatus = field(init=False)

    def __post_init__(self) -> None:
        self.live = LiveStatus(self.stream)
        if self.pair_timeout is None:  # every step's own timeout, plus start-up and judging
            t = self.lab.timeouts
            self.pair_timeout = t.boot + t.load + t.verdict + WATCHDOG_MARGIN_SECONDS

    @property
    def run_dir(self) -> Path:
        return self.lab.artifacts_dir / self.run_id

    def pair_dir(self, pair: Pair) -> Path:
        return self.run_dir / safe_component(pair.kernel) / safe_component(pair.scenario)

    def say(self, text: str) -> None:
        self.live.clear(flush=False)
        print(f"[{time.monotonic() - self.t0:7.1f}s] {text}", file=self.stream, flush=True)

    def child_argv(self, pair: Pair) -> list[str]:
        argv = [sys.executable, "-m", "labctl", "--lab", str(self.lab.path.resolve()), "run",
                str(pair.path), "--kernel", pair.kernel, "--artifacts", str(self.lab.artifacts_dir),
                "--run-id", self.run_id]
        return argv + (["--accel", self.accel] if self.accel else []) + (["--fresh"] if self.fresh else [])

    def start(self, pair: Pair, attempt: int) -> None:
        log_path = self.run_dir / f".{safe_component(pair.kernel)}.{safe_component(pair.scenario)}.{attempt}.log"
        with open(log_path, "wb") as log:
            # own session: a terminal's Ctrl-C reaches only this process, which then
            # stops each child exactly once (stop_children), never twice mid-cleanup
            process = subprocess.Popen(self.child_argv(pair), stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       env={**os.environ, PACKAGE_PINS_ENV: json.dumps(self.pins)})
        self.running.append(Running(pair, attempt, process, log_path))
        self.say(f"start {pair.key}" + (f" (retry {attempt - 1})" if attempt > 1 else "")
                 + f"; running {len(self.running)}")

    def collect(self, job: Running, total: int, may_retry: bool = True) -> Pair | None:
        """Read a finished child's result; return its pair if it must be retried."""
        self.running.remove(job)
        directory = self.pair_dir(job.pair)
        result = self._result(job, directory)
        set_aside = directory.with_name(f".{directory.name}.{ATTEMPT_PREFIX}1")
        if result.outcome in RETRY_OUTCOMES and job.attempt == 1 and may_retry:
            directory.rename(set_aside)  # the retry needs a fresh pair directory
            self.retries[job.pair.key] = [{"attempt": 1, "outcome": result.outcome,
                                           "reason": result.reason,
                                           "directory": f"{ATTEMPT_PREFIX}1"}]
            self.say(f"{job.pair.key}: {result.outcome} ({result.reason}); retrying once")
            return job.pair
        if job.attempt > 1:
            set_aside.rename(directory / f"{ATTEMPT_PREFIX}1")
        self._record(job.pair, job.attempt, job.started, result, total)
        return None

    def _record(self, pair: Pair, attempt: int, started: float, result: PairResult, total: int) -> None:
        """Annotate the final result with the matrix's facts and report it."""
        assert result.directory is not None, "a result is read from or written to its pair directory"
        result.extra["matrix"] = {"run_id": self.run_id, "shard": self.shard, "attempts": attempt,
                                  "retries": self.retries.get(pair.key, []),
                                  "expect_fail": pair.expect_fail}
        result.write()
        cell = Cell(result.directory, result.to_json())
        self.done.append(cell)
        self.say(f"{len(self.done)}/{total} done: {pair.key} {STATUS_LABELS[cell.status]} "
                 f"{result.outcome} in {time.monotonic() - started:.1f} s"
                 + (f" ({result.reason})" if result.outcome == Outcome.SKIPPED else "")
                 + self._running_note())

    def skipped(self, pair: Pair, total: int) -> bool:
        """Record a pair whose kernel lacks what its scenario needs, decided before any
        guest (pair/applies.py); True if it was skipped."""
        kernel = self.kernels.get(pair.kernel)
        result = skipped_result(self.lab, kernel, load_scenario(pair.path), self.run_id) if kernel else None
        if result is None:
            return False
        self._record(pair, 1, time.monotonic(), result, total)
        return True

    def _result(self, job: Running, directory: Path) -> PairResult:
        """The child's result.json, or an infra-error result if it left none."""
        directory.mkdir(parents=True, exist_ok=True)
        job.log_path.rename(directory / CHILD_LOG)
        path = directory / "result.json"
        if path.exists():
            result = PairResult.from_json(json.loads(path.read_text(encoding="utf-8")))
            result.directory = directory
            if job.watchdog:  # the lab hung, not the kernel: an infra error, retried once
                result.outcome, result.passed = Outcome.INFRA_ERROR, False
                result.reason = (f"watchdog: no verdict within {self.pair_timeout:.0f} s, "
                                 f"stopped ({result.reason})")
            return result
        tail = (directory / CHILD_LOG).read_text(errors="replace").strip().splitlines()[-3:]
        return PairResult(self.run_id, scenario={"name": job.pair.scenario, "path": str(job.pair.path)},
                          kernel={"name": job.pair.kernel}, outcome=Outcome.INFRA_ERROR,
                          reason=f"labctl run exited {job.process.returncode} without a "
                                 "result.json: " + " / ".join(tail),
                          timings={"total": round(time.monotonic() - job.started, 3)},
                          artifacts={"labctl_log": CHILD_LOG}, directory=directory)

    def _running_note(self) -> str:
        now = time.monotonic()
        names = ", ".join(f"{j.pair.key} ({now - j.started:.0f} s)" for j in self.running)
        return f"; running: {names}" if names else ""

    def run(self, pairs: list[Pair]) -> list[Cell]:
        """Run every pair, heaviest first; on an interruption stop the children cleanly,
        then re-raise."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        pending = [(pair, 1) for pair in schedule(pairs) if not self.skipped(pair, len(pairs))]
        every = LIVE_SECONDS if self.live.enabled else HEARTBEAT_SECONDS
        heartbeat = time.monotonic() + every
        try:
            while pending or self.running:
                while pending and len(self.running) < self.jobs:
                    self.start(*pending.pop(0))
                self.watch()
                for job in [j for j in self.running if j.process.poll() is not None]:
                    if retry := self.collect(job, len(pairs)):
                        pending.append((retry, 2))
                if time.monotonic() >= heartbeat:
                    self.heartbeat(len(pairs))
                    heartbeat = time.monotonic() + every
                time.sleep(POLL_SECONDS)
        except (KeyboardInterrupt, Interrupted):
            self.stop_children(len(pairs))
            raise Interrupted(f"matrix interrupted; {len(self.done)} of {len(pairs)} pairs "
                              f"finished, results in {self.run_dir}") from None
        finally:
            self.live.clear()
        return self.done

    def heartbeat(self, total: int) -> None:
        """Where the run is: on a terminal a live line per running guest with its latest
        progress line, elsewhere one plain line."""
        if not self.live.enabled:
            self.say(f"{len(self.done)}/{total} done" + self._running_note())
            return
        now = time.monotonic()
        self.live.show([f"[{now - self.t0:7.1f}s] {len(self.done)}/{total} done"]
                       + [f"  {j.pair.key} {now - j.started:4.0f} s: {last_line(j.log_path)}"
                          for j in self.running])

    def watch(self) -> None:
        """SIGTERM a child that outlived every timeout of its own (a wedged QMP call...)."""
        assert self.pair_timeout is not None  # __post_init__ sets it
        now = time.monotonic()
        for job in self.running:
            if not job.watchdog and now - job.started > self.pair_timeout:
                job.watchdog = True
                job.process.send_signal(signal.SIGTERM)
                self.say(f"{job.pair.key}: no verdict after {now - job.started:.0f} s; stopping it")
            elif job.watchdog and now - job.started > self.pair_timeout + STOP_GRACE_SECONDS:
                _kill(job.process)

    def stop_children(self, total: int) -> None:
        """SIGTERM each child (it cleans up its guest and writes its result), then wait."""
        for job in self.running:
            job.process.send_signal(signal.SIGTERM)
        for job in list(self.running):
            try:
                job.process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                _kill(job.process)
                job.process.wait()
            self.collect(job, total, may_retry=False)


def last_line(log: Path) -> str:
    """A child's latest progress line, without its clock and label (a bounded read)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line for line in tail.splitlines() if line.strip()]
    return PROGRESS_PREFIX.sub("", lines[-1]) if lines else "starting"


def _kill(process: subprocess.Popen) -> None:
    """SIGKILL a child that ignored SIGTERM, with its session (QEMU included)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- labctl matrix

def resolve_kernels(lab: LabConfig, names: list[str],
                    found: dict[str, Kernel] | None = None) -> dict[str, list[str]]:
    """Download (or build) each kernel once, before guests race for it; return the
    Debian package versions to pin for the children (and fill `found` with the kernels)."""
    pins = {}
    for name in names:
        kernel = resolve_kernel(lab, name, progress=say)
        if found is not None:
            found[name] = kernel
        if package := lab.kernels[name].debian_package:
            assert kernel.package and kernel.version, "a Debian kernel knows its package"
            pins[package] = [kernel.package, kernel.version]
    return pins


def cmd_matrix(args: argparse.Namespace) -> int:
    lab = lab_from_args(args)
    directory = lab.scenarios_dir
    if args.emit:
        all_pairs = select_pairs(lab, directory, args.kernels, args.scenarios)
        emit = emit_github if args.emit == "github" else emit_gitlab
        print(json.dumps(emit(all_pairs, args.shards), separators=(",", ":")))
        return 0
    pairs = select_pairs(lab, directory, args.kernels, args.scenarios, parse_shard(args.shard))
    baseline = scope_baseline(load_run(Path(args.baseline)), pairs, args.kernels, args.scenarios,
                              parse_shard(args.shard)) if args.baseline else None  # before any guest
    check_writable(lab.artifacts_dir)
    kernels: dict[str, Kernel] = {}
    run = MatrixRun(lab, args.run_id or new_run_id(), args.jobs, args.accel, args.shard,
                    pins=resolve_kernels(lab, sorted({p.kernel for p in pairs}), kernels),
                    pair_timeout=args.pair_timeout, fresh=args.fresh, kernels=kernels)
    if run.run_dir.exists():
        raise ConfigError(f"run directory {run.run_dir} already exists; pick another --run-id")
    say(f"matrix {run.run_id}: {len(pairs)} pairs (shard {args.shard}), {args.jobs} at a time")
    try:
        cells = run.run(pairs)
    finally:  # an interrupted matrix still reports the pairs it finished or stopped
        diff, paths = write_with_baseline(run.done, run.run_dir, baseline, run.run_id) \
            if baseline else (None, write_reports(run.done, run.run_dir))
        write_json(run.run_dir / "matrix.json", {
            "run_id": run.run_id, "shard": args.shard, "jobs": args.jobs,
            "pairs": [p.key for p in pairs], "wall_seconds": round(time.monotonic() - run.t0, 3),
            "counts": counts(run.done)})
    c = counts(cells)
    print(f"matrix {run.run_id}: {len(cells)} pairs in {time.monotonic() - run.t0:.1f} s: "
          + ", ".join(f"{c[s]} {s}" for s in STATUS_LABELS))
    if baseline and diff:
        print(f"since {baseline.label}: {diff.headline()}")
    for path in paths.values():
        print(f"  {path}")
    return exit_code(cells)  # a regression is a fail or xpass now: exit 1 already


def register(subparsers) -> None:
    matrix = subparsers.add_parser("matrix", help="run every kernel x scenario pair, in parallel "
                                                  "and sharded, with JUnit, summary.md and HTML")
    matrix.add_argument("--kernel", "--kernels", dest="kernels", nargs="+", action="extend",
                        help="catalogue names (repeatable; default: all)")
    matrix.add_argument("--scenario", "--scenarios", dest="scenarios", nargs="+", action="extend",
                        help="scenario names or paths (repeatable; default: all in scenarios/)")
    matrix.add_argument("-j", "--jobs", type=positive_int, default=1, help="guests at a time (default 1)")
    matrix.add_argument("--shard", default="1/1", help="run only shard I of N (default 1/1)")
    add_common_opts(matrix)
    matrix.add_argument("--pair-timeout", type=float, default=None,
                        help="stop a pair after this many seconds as an infra error (default: "
                             f"lab.yaml's boot + load + verdict timeouts + {WATCHDOG_MARGIN_SECONDS:.0f})")
    matrix.add_argument("--fresh", action="store_true", help="boot every pair cold instead of "
                        "forking it from a snapshot of the booted or loaded guest where it can be")
    matrix.add_argument("--run-id", type=run_id_arg, help="name of the run directory (default: time + random)")
    matrix.add_argument("--baseline", help="an earlier run (directory or matrix.json) to diff "
                                           "against: diff.md, badges in report.html")
    matrix.add_argument("--emit", choices=("github", "gitlab"),
                        help="print the CI job matrix (kernel x shard) as JSON and exit")
    matrix.add_argument("--shards", type=positive_int, default=2, help="shards per kernel for --emit")
    matrix.set_defaults(func=cmd_matrix)
