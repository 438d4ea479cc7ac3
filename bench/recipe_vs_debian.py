#!/usr/bin/env python3
"""Time-to-verdict: a recipe kernel (tinyconfig + the lab's fragment) against Debian's 6.12.

Purgatory hashes every loaded segment's memsz under TCG, so a smaller capture
kernel should reach a verdict sooner; this measures it, side by side, with the
verdicts (a faster wrong answer is not faster) and the sizes that explain it.
It also reports the recipe's from-scratch build time (from its build.json) and
times a cache hit of `labctl kernel build`.

    .venv/bin/python bench/recipe_vs_debian.py [-n 5] [--recipe tiny-6.12] [--debian debian-6.12]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from time_to_verdict import PHASES, ROOT, run_once  # same directory

SCENARIOS = ("crash-corrupt", "crash-intact")


def build_figures(recipe: str) -> str:
    """Cache-hit time measured now, from-scratch time as recorded by the build."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "labctl", "kernel", "build", recipe], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    hit = time.monotonic() - start
    bzimage = Path(proc.stdout.rsplit(" -> ", 1)[1].strip())
    meta = json.loads((bzimage.parent / "build.json").read_text())
    return (f"{recipe} build: from scratch {meta['seconds']:.0f} s with {meta['jobs']} jobs "
            f"(key {meta['key']}); `labctl kernel build` cache hit now {hit:.1f} s")


def measure(kernel: str, scenario: str, n: int, artifacts: Path) -> dict:
    runs = [run_once(scenario, kernel, artifacts) for _ in range(n)]
    results = [r for _, r in runs]
    segments = results[-1]["evidence"]["load"]["segments"]["segments"]
    return {
        "phases": {p: statistics.median(r["timings"][p] for r in results if p in r["timings"])
                   for p in PHASES if any(p in r["timings"] for r in results)},
        "wall": statistics.median(w for w, _ in runs),
        "verdicts": sorted({f"{r['outcome']}{'' if r['passed'] else ' (FAILED)'}" for r in results}),
        "failures": [f"{r['outcome']}: {r['reason']}" for r in results if not r["passed"]],
        "hashed_mib": sum(int(s["memsz"], 16) for s in segments if s.get("role") != "purgatory") / 2**20,
        "bzimage_kib": Path(results[-1]["kernel"]["bzimage"]).stat().st_size / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5, help="repetitions per kernel and scenario")
    parser.add_argument("--recipe", default="tiny-6.12")
    parser.add_argument("--debian", default="debian-6.12")
    args = parser.parse_args()
    print(build_figures(args.recipe))
    kernels = (args.debian, args.recipe)
    with tempfile.TemporaryDirectory(prefix="kexec-lab-bench-") as tmp:
        for scenario in SCENARIOS:
            figures = {k: measure(k, scenario, args.n, Path(tmp)) for k in kernels}
            print(f"\n{scenario}, n={args.n}, medians in seconds")
            print(f"  {'':26}" + "".join(f"{k:>22}" for k in kernels) + f"{'ratio':>8}")
            rows = [(p, lambda f, p=p: f["phases"].get(p)) for p in PHASES]
            rows += [("labctl wall time", lambda f: f["wall"]),
                     ("hashed memsz (MiB)", lambda f: f["hashed_mib"]),
                     ("bzImage (KiB)", lambda f: f["bzimage_kib"])]
            for name, get in rows:
                a, b = (get(figures[k]) for k in kernels)
                if a is None or b is None:
                    continue
                print(f"  {name:26}{a:22.2f}{b:22.2f}{(b / a if a else 0):8.2f}")
            for k in kernels:
                print(f"  verdicts on {k}: {', '.join(figures[k]['verdicts'])}")
                for failure in figures[k]["failures"]:
                    print(f"    failed run: {failure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
