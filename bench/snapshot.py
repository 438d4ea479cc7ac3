#!/usr/bin/env python3
"""Snapshot benchmark: what forking from a snapshot costs and saves, with memory per job.

Parts (all by default, or --only PART ...):
  run       `labctl run crash-corrupt` and `crash-intact` on debian-6.12, forked (n times)
            and --fresh (n times): wall and phase medians
  coverage  `labctl coverage` on both Debian kernels, both methods, -j 2
  matrix    `labctl matrix` on both Debian kernels x the catalogue, -j 2, snapshot creation
            included (a cache of the bench's own, with the shared kernels linked in)
  fuzz      `labctl fuzz --runs 100 -j 2` on debian-6.12
  compare   the matrix above --fresh and forked: every pair's outcome must be the same
While each part runs, a sampler reads every process the bench started (they carry a mark
in their environment): peak RSS (VmHWM) per QEMU and per labctl process, and the /dev/shm
each guest's RAM file holds; the load average is printed with every figure, since the
host is shared.

    .venv/bin/python bench/snapshot.py [-n 5] [--only run matrix ...]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ("debian-6.12", "debian-6.1")
MARK = "KEXEC_LAB_BENCH_MARK"
PHASES = ("boot", "load", "restore", "corrupt", "panic_to_verdict", "total")


class Sampler(threading.Thread):
    """Peak RSS of the bench's QEMU and labctl processes and /dev/shm per guest."""

    def __init__(self, mark: str):
        super().__init__(daemon=True)
        self.needle = f"{MARK}={mark}".encode()
        self.stop = threading.Event()
        self.peak = defaultdict(int)  # (kind, pid) -> VmHWM bytes
        self.shm = defaultdict(int)  # guest RAM file -> most bytes allocated
        self.shm_total = 0  # most /dev/shm bytes held by the bench's guests at once

    def run(self) -> None:
        while not self.stop.wait(0.25):
            total = 0
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if self.needle not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                        continue
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                kind = "qemu" if cmd[0].endswith(b"qemu-system-x86_64") else "python"
                hwm = next((int(line.split()[1]) * 1024 for line in status.splitlines()
                            if line.startswith("VmHWM:")), 0)
                self.peak[(kind, pid)] = max(self.peak[(kind, pid)], hwm)
                ram = next((a.split(b"mem-path=")[1].split(b",")[0] for a in cmd if b"mem-path=" in a), None)
                if ram:
                    try:
                        used = os.stat(ram).st_blocks * 512
                    except OSError:
                        continue
                    self.shm[ram] = max(self.shm[ram], used)
                    total += used
            self.shm_total = max(self.shm_total, total)

    def report(self) -> str:
        qemu = [v for (k, _), v in self.peak.items() if k == "qemu"]
        python = [v for (k, _), v in self.peak.items() if k == "python"]
        mib = 1 << 20
        parts = []
        if qemu:
            parts.append(f"QEMU peak RSS median {statistics.median(qemu) / mib:.0f} MiB, max "
                         f"{max(qemu) / mib:.0f} MiB ({len(qemu)} guests)")
        if python:
            parts.append(f"labctl process peak RSS max {max(python) / mib:.0f} MiB")
        if self.shm:
            parts.append(f"/dev/shm per guest median {statistics.median(self.shm.values()) / mib:.0f} "
                         f"MiB, max {max(self.shm.values()) / mib:.0f} MiB; at once max "
                         f"{self.shm_total / mib:.0f} MiB")
        return "; ".join(parts) or "no process sampled"


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def labctl(args: list[str], mark: str, lab: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    argv = [sys.executable, "-m", "labctl", *(["--lab", str(lab)] if lab else []), *args]
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, MARK: mark})
    return time.monotonic() - start, proc


def measured(name: str, args: list[str], lab: Path | None = None) -> subprocess.CompletedProcess:
    """One long labctl command, timed, with its memory sampled."""
    mark = secrets.token_hex(6)
    sampler = Sampler(mark)
    sampler.start()
    before = load()
    wall, proc = labctl(args, mark, lab)
    sampler.stop.set()
    sampler.join()
    tail = proc.stdout.strip().splitlines()[-12:] if proc.returncode not in (0, 1) else []
    print(f"{name}: {wall:.1f} s wall, exit {proc.returncode} ({before} -> {load()})")
    print(f"  memory: {sampler.report()}")
    for line in tail + proc.stderr.strip().splitlines()[-3:] * bool(tail):
        print(f"  | {line}")
    return proc


def bench_run(n: int, artifacts: Path) -> None:
    for scenario in ("crash-corrupt", "crash-intact"):
        for mode in ("forked", "fresh"):
            walls, phases, outcomes = [], defaultdict(list), defaultdict(int)
            mark = secrets.token_hex(6)
            sampler = Sampler(mark)
            sampler.start()
            before = load()
            for i in range(n):
                run_id = f"bench-{mode}-{scenario}-{i}-{secrets.token_hex(3)}"
                wall, proc = labctl(["run", "-q", scenario, "--kernel", "debian-6.12", "--artifacts",
                                     str(artifacts), "--run-id", run_id]
                                    + (["--fresh"] if mode == "fresh" else []), mark)
                result = json.loads((artifacts / run_id / "debian-6.12" / scenario / "result.json").read_text())
                walls.append(wall)
                outcomes[result["outcome"] + ("" if result["passed"] else " (FAILED)")] += 1
                for phase in PHASES:
                    if phase in result["timings"]:
                        phases[phase].append(result["timings"][phase])
            sampler.stop.set()
            sampler.join()
            print(f"labctl run {scenario} on debian-6.12, {mode}, n={n}: wall median "
                  f"{statistics.median(walls):.2f} s (min {min(walls):.2f}, max {max(walls):.2f}); "
                  + ", ".join(f"{k} x{v}" for k, v in outcomes.items()) + f" ({before} -> {load()})")
            print("  phases (median s): " + ", ".join(
                f"{p} {statistics.median(v):.2f}" for p, v in phases.items()))
            print(f"  memory: {sampler.report()}")


def private_lab(tmp: Path) -> Path:
    """lab.yaml with a snapshot cache of its own, so that snapshot creation is part of what
    is measured; everything else (kernels, built assets, package lookups) comes from the
    shared, warm cache, as the targets say."""
    shared = Path.home() / ".cache" / "kexec-lab"
    cache = tmp / "cache"
    cache.mkdir(parents=True)
    for entry in shared.iterdir():
        if entry.name == "snapshots":
            continue
        if entry.is_dir():
            (cache / entry.name).symlink_to(entry)
        else:
            shutil.copy(entry, cache / entry.name)
    data = yaml.safe_load((ROOT / "lab.yaml").read_text())
    data.update(cache_dir=str(cache), artifacts_dir=str(tmp / "artifacts"))
    (tmp / "scenarios").symlink_to(ROOT / "scenarios")
    (tmp / "lab.yaml").write_text(yaml.safe_dump(data))
    return tmp / "lab.yaml"


def outcomes(run_dir: Path) -> dict[str, str]:
    """kernel/scenario -> outcome of a matrix run."""
    return {f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())["outcome"]
            for p in run_dir.glob("*/*/result.json")}


def where_time_went(artifacts: Path, jobs: int) -> str:
    """The pairs' own times summed (result.json), per job slot: the matrix's wall time
    cannot be below what its guests spend after the panic, divided among the jobs."""
    sums: dict[str, float] = defaultdict(float)
    for path in artifacts.glob("*/*/*/result.json"):
        timings = json.loads(path.read_text())["timings"]
        for phase in ("total", "boot", "load", "restore", "panic_to_verdict"):
            sums[phase] += timings.get(phase, 0.0)
    return (f"pairs' own time, summed / {jobs} jobs: total {sums['total'] / jobs:.0f} s, of which "
            f"panic to verdict {sums['panic_to_verdict'] / jobs:.0f} s, boots {sums['boot'] / jobs:.0f} s, "
            f"loads {sums['load'] / jobs:.0f} s, restores {sums['restore'] / jobs:.0f} s "
            "(the rest: each pair's start, assets and kernel facts, recovery loads)")


def compare(tmp: Path, scenarios: list[str] | None) -> None:
    lab = private_lab(tmp / "compare-lab")
    runs = {}
    for mode in ("fresh", "forked"):
        run_id = f"compare-{mode}-{secrets.token_hex(3)}"
        measured(f"matrix {mode}, 2 Debian kernels x catalogue, -j 2",
                 ["matrix", "--kernels", *KERNELS, "-j", "2", "--run-id", run_id]
                 + (["--scenarios", *scenarios] if scenarios else [])
                 + (["--fresh"] if mode == "fresh" else []), lab)
        runs[mode] = outcomes(tmp / "compare-lab" / "artifacts" / run_id)
    differ = {k: (runs["fresh"].get(k), runs["forked"].get(k))
              for k in sorted(set(runs["fresh"]) | set(runs["forked"]))
              if runs["fresh"].get(k) != runs["forked"].get(k)}
    print(f"fresh vs forked: {len(runs['fresh'])} and {len(runs['forked'])} pairs, "
          f"{len(differ)} differ" + "".join(f"\n  {k}: fresh {a}, forked {b}" for k, (a, b) in differ.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5, help="repetitions of each labctl run")
    parser.add_argument("--only", nargs="+", choices=("run", "coverage", "matrix", "fuzz", "compare"),
                        default=["run", "coverage", "matrix", "fuzz"])
    parser.add_argument("--fuzz-runs", type=int, default=100)
    parser.add_argument("--scenarios", nargs="+", help="the matrix's scenarios (default: all)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; {load()}")
    with tempfile.TemporaryDirectory(prefix="kexec-lab-bench-") as tmp:
        tmp = Path(tmp)
        artifacts = tmp / "artifacts"
        if "run" in args.only:
            bench_run(args.n, artifacts)
        if "coverage" in args.only:
            measured("coverage, 2 Debian kernels x both methods, -j 2",
                     ["coverage", "--table", "digest", *[a for k in KERNELS for a in ("--kernel", k)], "-j", "2",
                      "--artifacts", str(artifacts)])
        if "matrix" in args.only:
            lab = private_lab(tmp / "matrix-lab")
            measured("matrix, 2 Debian kernels x catalogue, -j 2, snapshots created in the run",
                     ["matrix", "--kernels", *KERNELS, "-j", "2",
                      *(["--scenarios", *args.scenarios] if args.scenarios else [])], lab)
            print("  " + where_time_went(tmp / "matrix-lab" / "artifacts", jobs=2))
        if "fuzz" in args.only:
            proc = measured(f"fuzz --runs {args.fuzz_runs} -j 2 on debian-6.12",
                            ["fuzz", "--kernel", "debian-6.12", "--runs", str(args.fuzz_runs),
                             "--seed", "1", "-j", "2", "--artifacts", str(artifacts)])
            print("  " + (proc.stdout.strip().splitlines() or ["(no output)"])[0])
        if "compare" in args.only:
            compare(tmp, args.scenarios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
