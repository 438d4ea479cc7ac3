#!/usr/bin/env python3
"""Time-to-verdict benchmark: run scenarios N times and print per-phase figures.

Each repetition is a whole `labctl run` (the wall time a user waits, cache
warm), and the phase timings come from each pair's result.json.  The verdicts
are printed too: a benchmark that got faster by getting the answer wrong is
not faster.

    .venv/bin/python bench/time_to_verdict.py [-n 5] [--kernel debian-6.12] [SCENARIO ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("boot", "load", "corrupt", "panic_to_verdict", "dump_check", "total")


def run_once(scenario: str, kernel: str, artifacts: Path) -> tuple[float, dict]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "labctl", "run", "-q", scenario, "--kernel", kernel,
                           "--artifacts", str(artifacts)], cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - start
    results = sorted(artifacts.glob(f"*/*/{scenario}/result.json"), key=lambda p: p.stat().st_mtime)
    if not results:
        raise SystemExit(f"no result for {scenario}: {proc.stderr.strip()[-500:]}")
    return wall, json.loads(results[-1].read_text())


def row(name: str, values: list[float]) -> str:
    if not values:
        return f"  {name:18} {'-':>8}"
    return (f"  {name:18} {statistics.median(values):8.2f} {min(values):8.2f} {max(values):8.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", default=["crash-corrupt", "crash-intact"])
    parser.add_argument("-n", type=int, default=5, help="repetitions per scenario")
    parser.add_argument("--kernel", default="debian-6.12")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kexec-lab-bench-") as tmp:
        for scenario in args.scenarios:
            phases, walls, outcomes = defaultdict(list), [], defaultdict(int)
            for _ in range(args.n):
                wall, result = run_once(scenario, args.kernel, Path(tmp))
                walls.append(wall)
                outcomes[f"{result['outcome']}{'' if result['passed'] else ' (FAILED)'}"] += 1
                for phase in PHASES:
                    if phase in result["timings"]:
                        phases[phase].append(result["timings"][phase])
            print(f"{scenario} on {args.kernel}, n={args.n}, accel "
                  f"{result['accelerator']['name'] if result['accelerator'] else '?'}: "
                  + ", ".join(f"{k} x{v}" for k, v in outcomes.items()))
            print(f"  {'seconds':18} {'median':>8} {'min':>8} {'max':>8}")
            for phase in PHASES:
                print(row(phase, phases[phase]))
            print(row("labctl wall time", walls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
