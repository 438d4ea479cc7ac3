#!/usr/bin/env python3
"""Repeatability: run crash-corrupt and crash-intact N times each; count flakes.

A lab whose red is sometimes wrong is not trusted.  Each repetition is a whole
`labctl run` (a fresh guest); a flake is any run that did not pass (its outcome is
not the expected one, or it ended in an infrastructure error).  The spread of
time-to-verdict (trigger to verdict) and of the whole run is printed too.
Not part of CI: on 2 cores 20 runs take a few minutes.

    .venv/bin/python bench/repeatability.py [-n 10] [--kernel debian-6.12] [SCENARIO ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_once(scenario: str, kernel: str, artifacts: Path) -> dict:
    """One `labctl run`; its result.json plus the exit code and the wall time."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "labctl", "run", "-q", scenario, "--kernel", kernel,
                           "--artifacts", str(artifacts)], cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - start
    line = next((s for s in proc.stdout.splitlines() if s.startswith("  artifacts: ")), None)
    if line is None:
        return {"outcome": "no-result", "passed": False, "exit": proc.returncode, "wall": wall,
                "timings": {}, "reason": proc.stderr.strip()[-300:]}
    result = json.loads((Path(line.split(": ", 1)[1]) / "result.json").read_text())
    return {**result, "exit": proc.returncode, "wall": wall}


def spread(values: list[float]) -> str:
    """median / min / max / population stdev, in seconds."""
    if not values:
        return "-"
    return (f"median {statistics.median(values):6.2f}  min {min(values):6.2f}  "
            f"max {max(values):6.2f}  stdev {statistics.pstdev(values):5.2f}")


def report(scenario: str, runs: list[dict]) -> int:
    """Print one scenario's figures; return its flake count."""
    outcomes = Counter(r["outcome"] for r in runs)
    flakes = [r for r in runs if not r["passed"]]
    print(f"{scenario}: {len(runs)} runs, outcomes {dict(outcomes)}, flakes {len(flakes)}")
    for r in flakes:
        print(f"  flake: {r['outcome']} exit {r['exit']}: {r.get('reason')}")
    verdict_times = [r["timings"]["panic_to_verdict"] for r in runs if "panic_to_verdict" in r["timings"]]
    print(f"  time-to-verdict  {spread(verdict_times)}")
    print(f"  boot             {spread([r['timings']['boot'] for r in runs if 'boot' in r['timings']])}")
    print(f"  labctl run wall  {spread([r['wall'] for r in runs])}")
    return len(flakes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", default=["crash-corrupt", "crash-intact"])
    parser.add_argument("-n", type=int, default=10, help="repetitions per scenario")
    parser.add_argument("--kernel", default="debian-6.12")
    args = parser.parse_args()
    flakes = 0
    with tempfile.TemporaryDirectory(prefix="repeatability-") as tmp:
        for scenario in args.scenarios:
            runs = []
            for i in range(args.n):
                runs.append(run_once(scenario, args.kernel, Path(tmp)))
                print(f"  {scenario} #{i + 1}: {runs[-1]['outcome']} in {runs[-1]['wall']:.1f} s",
                      file=sys.stderr, flush=True)
            flakes += report(scenario, runs)
    total = args.n * len(args.scenarios)
    print(f"total: {total} runs on {args.kernel}, {flakes} flakes")
    return 1 if flakes else 0


if __name__ == "__main__":
    sys.exit(main())
