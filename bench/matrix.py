#!/usr/bin/env python3
"""Matrix benchmark: wall time and pairs per hour of `labctl matrix` at several --jobs.

Each measurement is one whole `labctl matrix` call (what a nightly job waits
for, kernels already cached).  The verdict counts are printed beside the
times: a run that got faster by erroring out is not faster.  Scenarios default
to everything in scenarios/, so new scenarios are measured without edits.

    .venv/bin/python bench/matrix.py [--jobs 1 2] [--kernels debian-6.12 debian-6.1]
                                     [--scenarios crash-intact crash-corrupt]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_matrix(jobs: int, kernels: list[str], scenarios: list[str], artifacts: Path) -> tuple[float, dict]:
    """One `labctl matrix` call; returns its wall time and its matrix.json."""
    argv = [sys.executable, "-m", "labctl", "matrix", "--jobs", str(jobs), "--artifacts", str(artifacts),
            "--run-id", f"bench-jobs-{jobs}", "--kernels", *kernels]
    if scenarios:
        argv += ["--scenarios", *scenarios]
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - start
    plan = artifacts / f"bench-jobs-{jobs}" / "matrix.json"
    if not plan.exists():
        raise SystemExit(f"labctl matrix --jobs {jobs} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return wall, json.loads(plan.read_text())


def pair_seconds(run_dir: Path) -> float:
    """Sum of the pairs' own totals: what --jobs 1 would cost without overheads."""
    return sum(json.loads(p.read_text())["timings"].get("total", 0.0)
               for p in run_dir.glob("*/*/result.json"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--kernels", nargs="+", default=["debian-6.12", "debian-6.1"])
    parser.add_argument("--scenarios", nargs="*", default=[], help="default: all in scenarios/")
    args = parser.parse_args()
    print(f"kernels: {' '.join(args.kernels)}; scenarios: {' '.join(args.scenarios) or 'all'}")
    print(f"{'jobs':>4} {'pairs':>5} {'wall s':>8} {'pairs/h':>8} {'sum of pairs s':>15} {'speed-up':>8}  verdicts")
    with tempfile.TemporaryDirectory(prefix="bench-matrix-") as tmp:
        for jobs in args.jobs:
            wall, plan = run_matrix(jobs, args.kernels, args.scenarios, Path(tmp))
            pairs = len(plan["pairs"])
            serial = pair_seconds(Path(tmp) / f"bench-jobs-{jobs}")
            counts = ", ".join(f"{n} {status}" for status, n in plan["counts"].items() if n)
            print(f"{jobs:>4} {pairs:>5} {wall:8.1f} {3600 * pairs / wall:8.0f} {serial:15.1f} "
                  f"{serial / wall:8.2f}  {counts}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
