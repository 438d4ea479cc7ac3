#!/usr/bin/env python3
"""SMP repeatability: boots and crashes at smp 1 and smp 2, spurious oopses, time-to-verdict.

Whether 2 vCPUs can be the catalogue default: once, in 12 MTTCG boots with -smp 2, the
primary kernel died during boot with a spurious `Oops: int3` in a timer function
(bench/README.md, "SMP repeatability").  Each repetition is a whole `labctl run`
of crash-intact with the scenario's machine.smp set (a fresh guest: boot, load,
sysrq panic, capture kernel).  A spurious oops is an Oops/BUG/WARNING/GPF line on the
console before the lab's own `sysrq: Trigger a crash`, or a run that did not reach
the trigger (infra-error while booting or loading).  Rounds alternate smp 1 and
smp 2, so that load from other jobs on the host falls on both alike.
Not part of CI: each run takes 8-30 s here.

    .venv/bin/python bench/smp_repeatability.py [-n 10] [--kernel debian-6.12 ...]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEPT = ROOT / "artifacts" / "smp-repeatability-kept"  # runs that did not pass
SPURIOUS = re.compile(r"Oops|BUG:|WARNING:|general protection fault|Kernel panic")
TRIGGER = "sysrq: Trigger a crash"
SCENARIO = """description: crash-intact at smp {smp} (bench/smp_repeatability.py)
machine:
  smp: {smp}
trigger: sysrq
expect: capture-booted
"""


def run_once(scenario: Path, kernel: str, artifacts: Path) -> dict:
    """One `labctl run`: its result.json, exit code, wall time, and the console's
    suspicious lines before the trigger."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "labctl", "run", "-q", str(scenario), "--kernel", kernel,
                           "--artifacts", str(artifacts)], cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - start
    line = next((s for s in proc.stdout.splitlines() if s.startswith("  artifacts: ")), None)
    if line is None:
        return {"outcome": "no-result", "passed": False, "wall": wall, "timings": {},
                "spurious": [proc.stderr.strip()[-200:]]}
    out = Path(line.split(": ", 1)[1])
    result = json.loads((out / "result.json").read_text())
    if not result["passed"]:  # keep its registers and logs past the temporary directory
        shutil.copytree(out, KEPT / f"{out.parent.name}-{out.name}-{out.parent.parent.name}")
    console = (out / "serial.log").read_text(errors="replace") if (out / "serial.log").exists() else ""
    before = console.split(TRIGGER, 1)[0]
    spurious = [s.strip() for s in before.splitlines() if SPURIOUS.search(s)]
    if TRIGGER not in console:
        spurious.append(f"never reached the trigger: {result['outcome']}: {result.get('reason')}")
    return {**result, "wall": wall, "spurious": spurious}


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):6.2f}  min {min(values):6.2f}  max {max(values):6.2f}"


def report(kernel: str, smp: int, runs: list[dict]) -> None:
    oopsed = [r for r in runs if r["spurious"]]
    failed = [r for r in runs if not r["passed"]]
    print(f"{kernel} smp {smp}: {len(runs)} boots, {len(oopsed)} with a spurious oops or no trigger, "
          f"{len(failed)} not passed" + (f" (kept in {KEPT})" if failed else ""))
    for r in oopsed:
        print(f"  spurious: {r['spurious'][0][:160]}")
    for r in failed:
        print(f"  not passed: {r['outcome']}: {(r.get('reason') or '')[:160]}")
    print(f"  boot             {spread([r['timings']['boot'] for r in runs if 'boot' in r['timings']])}")
    verdict_times = [r["timings"]["panic_to_verdict"] for r in runs if "panic_to_verdict" in r["timings"]]
    print(f"  time-to-verdict  {spread(verdict_times)}")
    print(f"  labctl run wall  {spread([r['wall'] for r in runs])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10, help="runs per kernel and smp")
    parser.add_argument("--kernel", action="append", help="repeatable (default: both Debian kernels)")
    args = parser.parse_args()
    kernels = args.kernel or ["debian-6.12", "debian-6.1"]
    bad = 0
    with tempfile.TemporaryDirectory(prefix="smp-repeat-") as tmp:
        scenarios = {}
        for smp in (1, 2):
            scenarios[smp] = Path(tmp) / f"crash-intact-smp{smp}.yaml"
            scenarios[smp].write_text(SCENARIO.format(smp=smp))
        for kernel in kernels:
            runs: dict[int, list[dict]] = {1: [], 2: []}
            for i in range(args.n):
                for smp in (1, 2):
                    run = run_once(scenarios[smp], kernel, Path(tmp) / "artifacts")
                    runs[smp].append(run)
                    print(f"  {kernel} smp {smp} #{i + 1}: {run['outcome']} in {run['wall']:.1f} s"
                          f"{' SPURIOUS' if run['spurious'] else ''}", file=sys.stderr, flush=True)
            for smp in (1, 2):
                report(kernel, smp, runs[smp])
                bad += sum(1 for r in runs[smp] if r["spurious"] or not r["passed"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
