"""`labctl fuzz`: random corruptions of the loaded segments, each forked from the snapshot.

The snapshot of the loaded guest gives the segment table; each run draws a segment
(weighted by its size), an offset, a length (1-4096) and a pattern from a seeded
generator, restores the snapshot, corrupts, panics and observes.  Each result is
judged against the digest model (coverage.digest_model): bytes purgatory hashes must
be refused; bytes it does not hash must boot the capture kernel with a healthy dump,
or the result must be one the model explains.  Anything else is a surprise, saved
as a scenario YAML that `labctl run FILE` replays.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from labctl import stopping
from labctl.artifacts import check_writable, new_run_id, write_json
from labctl.campaigns.coverage import digest_model
from labctl.campaigns.matrix import run_id_arg
from labctl.config.arch import HOST
from labctl.config.options import add_common_opts, lab_from_args, positive_int
from labctl.config.schema import (
    LOAD_METHODS,
    OUTCOMES,
    PATTERNS,
    Corruption,
    Expectation,
    LabConfig,
    LoadStep,
    Scenario,
)
from labctl.errors import EXIT_FAILED, EXIT_INFRA, EXIT_PASSED, ConfigError, Interrupted
from labctl.evidence.segments import SegmentTable
from labctl.guest.accel import AccelChooser
from labctl.kernel.providers import Kernel, resolve_kernel
from labctl.pair.runner import PairRun, run_pair
from labctl.progress import Progress, say
from labctl.result import Outcome

MAX_LENGTH = 4096


@dataclass(frozen=True)
class Draw:
    """One random corruption: where in which segment, how long, what pattern."""

    index: int
    role: str
    offset: int
    length: int
    pattern: str
    seed: int

    @property
    def name(self) -> str:
        return f"fuzz-{self.index:04d}"

    def corruption(self) -> Corruption:
        return Corruption(self.role, self.offset, self.length, self.pattern, self.seed)


def draw_corruptions(table: SegmentTable, count: int, seed: int,
                     read=None) -> list[Draw]:
    """`count` corruptions from a seeded generator: a segment with probability
    proportional to its memsz, a length of 1-4096 bytes that fits it, an offset in
    [0, memsz - length], a pattern.  read(address, length) -> bytes, when given,
    redraws a 'zero' pattern over bytes that are zeros already (it would change nothing)."""
    segments = [(s, s.role) for s in table.segments if s.role]
    if not segments:
        raise ConfigError("the snapshot's segment table names no segment role: nothing to fuzz")
    rng = random.Random(seed)
    draws: list[Draw] = []
    while len(draws) < count:
        segment, role = rng.choices(segments, weights=[s.memsz for s, _ in segments])[0]
        length = rng.randint(1, min(MAX_LENGTH, segment.memsz))
        offset = rng.randrange(0, segment.memsz - length + 1)
        pattern = rng.choice(PATTERNS)
        item_seed = rng.getrandbits(32)
        if pattern == "zero" and read is not None and not any(read(segment.mem + offset, length)):
            continue
        draws.append(Draw(len(draws) + 1, role, offset, length, pattern, item_seed))
    return draws


def prediction(model: dict, role: str) -> tuple[str | None, str]:
    """The outcome the digest model predicts for corrupting `role`, and why (None: any
    outcome is explained, e.g. purgatory's own bytes)."""
    hashed, why = model.get(role, (None, f"the model does not know the {role} segment"))
    if hashed:
        return str(Outcome.PURGATORY_REFUSED), why
    if hashed is None:
        return None, why
    if role == "purgatory":
        return None, why + "; the bytes may be its code, its data or the digest, so any outcome is explained"
    return str(Outcome.CAPTURE_BOOTED), why


def judge_run(model: dict, draw: Draw, result: dict) -> dict:
    """Classify one run: refused / booted / other, and whether the model expected it."""
    outcome = result.get("outcome")
    expected, why = prediction(model, draw.role)
    vmcore = ((result.get("evidence") or {}).get("verdict") or {}).get("vmcore") or {}
    kind = ("refused" if outcome == Outcome.PURGATORY_REFUSED else
            "booted" if outcome == Outcome.CAPTURE_BOOTED else "other")
    verdict = {"kind": kind, "outcome": outcome, "expected": expected, "model": why,
               "vmcore_ok": vmcore.get("ok") if outcome == Outcome.CAPTURE_BOOTED else None}
    if outcome not in OUTCOMES:  # infra-error, config-error, interrupted: no finding
        return {**verdict, "status": "no-verdict", "explanation": result.get("reason")}
    if expected is None:
        return {**verdict, "status": "explained", "explanation": why}
    if outcome != expected:
        return {**verdict, "status": "surprise",
                "explanation": f"the model predicts {expected} ({why}); got {outcome}"}
    if outcome == Outcome.CAPTURE_BOOTED and vmcore.get("ok") is False:
        return {**verdict, "status": "explained",
                "explanation": f"{why}: the corrupted headers broke /proc/vmcore"}
    return {**verdict, "status": "as-predicted", "explanation": why}


def fuzz_scenario(method: str, draw: Draw, model: dict) -> Scenario:
    expected, why = prediction(model, draw.role)
    return Scenario(name=draw.name, path=Path(f"<fuzz:{draw.name}>"),
                    description=f"{method}: {draw.length} B {draw.pattern} at {draw.role}+{draw.offset:#x}",
                    load=LoadStep(method=method), corrupt=draw.corruption(), trigger="sysrq",
                    expect=Expectation(expected or Outcome.CAPTURE_BOOTED,
                                       reason=why if expected else f"no prediction: {why}"))


def scenario_yaml(kernel: str, method: str, draw: Draw, verdict: dict, directory: str) -> str:
    """A ready-to-run scenario that replays a surprise (labctl run FILE --kernel KERNEL)."""
    doc = {"description": f"labctl fuzz surprise on {kernel}: {verdict['explanation']} "
                          f"(run {directory}). Replay: labctl run THIS_FILE --kernel {kernel}",
           "load": {"method": method},
           "corrupt": {"segment": draw.role, "offset": draw.offset, "length": draw.length,
                       "pattern": draw.pattern, "seed": draw.seed},
           "trigger": "sysrq",
           "expect": {"outcome": verdict["expected"], "reason": verdict["model"]}}
    return yaml.safe_dump(doc, sort_keys=False, width=100)


def summary_markdown(kernel: str, method: str, seed: int, snapshot: str, rows: list[dict]) -> str:
    counts = {k: sum(r["verdict"]["kind"] == k for r in rows) for k in ("refused", "booted", "other")}
    status = {k: sum(r["verdict"]["status"] == k for r in rows)
              for k in ("as-predicted", "explained", "surprise", "no-verdict")}
    lines = [f"# labctl fuzz: {kernel}, {method}, seed {seed}", "",
             f"{len(rows)} runs forked from snapshot {snapshot}: {counts['refused']} refused, "
             f"{counts['booted']} booted, {counts['other']} other; {status['as-predicted']} as the "
             f"digest model predicts, {status['explained']} explained, {status['surprise']} "
             f"surprise(s), {status['no-verdict']} without a verdict (infrastructure).", "",
             "| run | segment | offset | length | pattern | outcome | status | why |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d, v = r["draw"], r["verdict"]
        lines.append(f"| {d['index']} | {d['role']} | {d['offset']:#x} | {d['length']} | "
                     f"{d['pattern']} | {v['outcome']} | {v['status']} | {v['explanation']} |")
    return "\n".join(lines) + "\n"


_WORKER = {"active": False}  # per worker process: a pair is running in it
STOP_GRACE_SECONDS = 30.0


def _worker_stop(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    """A stop signal in a worker: its running pair stops cleanly (guest gone, result says
    interrupted), and a run it has not started yet is never started.  The request is
    recorded whatever the moment, so a signal that lands between two runs (before the
    next one marks itself active) still stops that next one at its first check."""
    reason = f"received {signal.Signals(signum).name}"
    if _WORKER["active"]:
        _WORKER["active"] = False  # a second signal must not cut the pair's cleanup short
        stopping.interrupt_here(reason)
    stopping.request(reason)


def _worker_init() -> None:
    stopping.reset()
    for sig in stopping.STOP_SIGNALS:
        signal.signal(sig, _worker_stop)


def _run_one(lab: LabConfig, kernel: Kernel, method: str, draw: Draw, model: dict,
             run_id: str) -> dict:
    """One corruption forked from the snapshot (runs in a worker process)."""
    _WORKER["active"] = True
    try:
        stopping.check()  # a stop that came before this run: never start it
        outcome = run_pair(lab, kernel, fuzz_scenario(method, draw, model), run_id,
                           AccelChooser(lab.cache_dir), quiet=True)
    finally:
        _WORKER["active"] = False
    return {"result": outcome.to_json(), "directory": str(outcome.directory)}


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """SIGTERM every worker (each stops its guest), cancel what has not started, wait."""
    processes = list((pool._processes or {}).values())  # noqa: SLF001 - no public handle
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(STOP_GRACE_SECONDS)
        if process.is_alive():
            process.kill()


@dataclass
class FuzzRun:
    """One `labctl fuzz`: the draws, the runs as they finish, the report."""

    lab: LabConfig
    kernel: Kernel
    method: str
    model: dict
    run_id: str
    out: Path
    rows: list = field(default_factory=list)

    def record(self, draw: Draw, ran: dict) -> dict:
        verdict = judge_run(self.model, draw, ran["result"])
        row = {"draw": asdict(draw), "verdict": verdict, "directory": ran["directory"]}
        if verdict["status"] == "surprise":
            path = self.out / "surprises" / f"{draw.name}.yaml"
            path.parent.mkdir(exist_ok=True)
            path.write_text(scenario_yaml(self.kernel.name, self.method, draw, verdict, ran["directory"]))
            row["scenario"] = str(path)
        self.rows.append(row)
        return verdict

    def run(self, draws: list[Draw], jobs: int, say) -> None:
        """Every draw in a pool of `jobs` worker processes; an interruption stops them all
        (SIGTERM: each cleans up its guest) and cancels what has not started."""
        context = multiprocessing.get_context("spawn")  # no fork of a process holding sockets
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_init)
        try:
            futures = {pool.submit(_run_one, self.lab, self.kernel, self.method, d, self.model,
                                   self.run_id): d for d in draws}
            for done, future in enumerate(as_completed(futures), 1):
                draw = futures[future]
                try:
                    ran = future.result()
                except Exception as exc:  # noqa: BLE001 - one broken worker is one no-verdict row
                    ran = {"result": {"outcome": "infra-error", "reason": f"worker failed: {exc}"},
                           "directory": str(self.lab.artifacts_dir / self.run_id / self.kernel.name / draw.name)}
                verdict = self.record(draw, ran)
                say(f"[{done}/{len(draws)}] {draw.role}+{draw.offset:#x} {draw.length} B "
                    f"{draw.pattern}: {verdict['outcome']} ({verdict['status']})")
        except (KeyboardInterrupt, Interrupted):
            _stop_pool(pool)
            raise Interrupted(f"fuzz interrupted after {len(self.rows)} of {len(draws)} runs; "
                              f"partial summary in {self.out}") from None
        pool.shutdown()

    def report(self, seed: int, runs: int, snapshot: str) -> str:
        self.rows.sort(key=lambda r: r["draw"]["index"])
        text = summary_markdown(self.kernel.name, self.method, seed, snapshot, self.rows)
        (self.out / "summary.md").write_text(text)
        write_json(self.out / "fuzz.json", {
            "run_id": self.run_id, "kernel": self.kernel.describe(), "method": self.method,
            "seed": seed, "runs": runs, "snapshot": snapshot,
            "model": {k: list(v) for k, v in self.model.items()}, "rows": self.rows})
        return text


def _draws(lab: LabConfig, kernel: Kernel, method: str, runs: int, seed: int):
    """The snapshot to fork from (made now if needed) and the corruptions drawn from its table."""
    base = Scenario(name="fuzz-snapshot", path=Path("<fuzz>"), description="", corrupt=None,
                    load=LoadStep(method=method), trigger="sysrq", expect=Expectation(Outcome.PURGATORY_REFUSED))
    snap = PairRun(lab, kernel, base, AccelChooser(lab.cache_dir), Progress(kernel.name),
                   snapshots=True).prepare_snapshot()
    with open(snap.ram, "rb") as ram:
        def read(address: int, length: int) -> bytes:
            ram.seek(address)
            return ram.read(length)
        return snap, draw_corruptions(snap.table, runs, seed, read)


def cmd_fuzz(args: argparse.Namespace) -> int:
    lab = lab_from_args(args)
    check_writable(lab.artifacts_dir)
    kernel = resolve_kernel(lab, args.kernel, progress=say)
    if kernel.arch != HOST.name:
        raise ConfigError(f"labctl fuzz forks every run from a snapshot, and snapshots are verified "
                          f"on {HOST.name} guests only ({kernel.name} is {kernel.arch})")
    run_id = args.run_id or new_run_id()
    snap, draws = _draws(lab, kernel, args.method, args.runs, args.seed)
    say(f"fuzz {run_id}: {args.runs} corruptions on {kernel.name} ({args.method}), seed {args.seed}, "
         f"{args.jobs} at a time, from snapshot {snap.key}")
    out = lab.artifacts_dir / run_id / "fuzz"
    out.mkdir(parents=True, exist_ok=True)
    fuzz = FuzzRun(lab, kernel, args.method, digest_model(kernel, args.method), run_id, out)
    try:
        fuzz.run(draws, args.jobs, say)
    finally:  # an interrupted fuzz still reports the runs it finished
        text = fuzz.report(args.seed, args.runs, snap.key)
    print(text.split("\n\n")[1])
    for row in fuzz.rows:
        if "scenario" in row:
            print(f"  surprise {row['draw']['index']}: {row['verdict']['explanation']}\n"
                  f"    replay: labctl run {row['scenario']} --kernel {kernel.name}")
    print(f"written: {out / 'summary.md'} and fuzz.json")
    statuses = {r["verdict"]["status"] for r in fuzz.rows}
    return EXIT_FAILED if "surprise" in statuses else EXIT_INFRA if "no-verdict" in statuses else EXIT_PASSED


def register(sub) -> None:
    parser = sub.add_parser("fuzz", help="random corruptions of the loaded segments, judged "
                                         "against the digest model; surprises saved as scenarios")
    parser.add_argument("--kernel", help="catalogue name or bzImage (default: lab.yaml's)")
    parser.add_argument("--method", choices=LOAD_METHODS, default="kexec_file_load",
                        help="load method (default kexec_file_load)")
    parser.add_argument("--runs", type=positive_int, default=20, help="corruptions to try (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    parser.add_argument("-j", "--jobs", type=positive_int, default=1, help="guests at a time (default 1)")
    add_common_opts(parser)
    parser.add_argument("--run-id", type=run_id_arg, help="run directory name (default: time + random)")
    parser.set_defaults(func=cmd_fuzz)
