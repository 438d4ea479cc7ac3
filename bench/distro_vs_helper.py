#!/usr/bin/env python3
"""Time-to-verdict: Debian's own kdump stack against the lab's helper, same kernel, same question.

The question: boot, load a capture kernel with kexec_load, panic (sysrq c), get a dump
saved and checked.  The distro stack is scenario distro-kdump (systemd boot, kdump-tools
loads, the capture kernel boots the root disk into kdump-tools-dump.service, makedumpfile
-F -c -d 31 to /var/crash, reboot; the host checks the saved dump).  The helper is
crash-intact-kexec-load with --save-vmcore (busybox initramfs, the helper loads with
kexec-tools, the capture helper runs the same makedumpfile options and streams the dump
out; no reboot: the lab ends QEMU).  Both run --fresh (no snapshot), cache warm.  Each
repetition is a whole `labctl run`; the verdicts are printed too.

    .venv/bin/python bench/distro_vs_helper.py [-n 1] [--kernel debian-6.12]
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

ROOT = Path(__file__).resolve().parent.parent
DISTRO = ("distro-kdump", ())
HELPER = ("crash-intact-kexec-load", ("--save-vmcore",))


def phases(result: dict) -> dict[str, float | None]:
    """The common phases, from either kind of result.json."""
    t = result["timings"]
    if "boot_to_kdump_report" in t:  # the distro stack
        dump_saved = t.get("panic_to_vmcore_saved")
        return {"boot + load": t["boot_to_kdump_report"],
                "panic -> capture kernel": t.get("panic_to_capture_banner"),
                "panic -> dump saved": dump_saved,
                "panic -> reboot": t.get("panic_to_reboot"),
                "host dump check": t.get("dump_check"), "labctl total": t.get("total")}
    # the helper's verdict comes once the capture helper streamed the dump out and the host
    # rebuilt and checked it (Session.capture_booted: save_vmcore is inside panic_to_verdict)
    return {"boot + load": t["boot"] + t["load"],
            "panic -> capture kernel": t.get("panic_to_capture_banner"),
            "panic -> dump saved": t["panic_to_verdict"] if "save_vmcore" in t else None,
            "panic -> reboot": None,  # the helper's guest does not reboot
            "host dump check": t.get("dump_check"), "labctl total": t.get("total")}


def run_once(scenario: str, extra: tuple[str, ...], kernel: str, artifacts: Path) -> tuple[float, dict]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "labctl", "run", "-q", "--fresh", scenario, *extra,
                           "--kernel", kernel, "--artifacts", str(artifacts)],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - start
    results = sorted(artifacts.glob(f"*/*/{scenario}/result.json"), key=lambda p: p.stat().st_mtime)
    if not results:
        raise SystemExit(f"no result for {scenario}: {proc.stderr.strip()[-500:]}")
    return wall, json.loads(results[-1].read_text())


def measure(which: tuple[str, tuple[str, ...]], kernel: str, n: int, artifacts: Path) -> dict:
    runs = [run_once(which[0], which[1], kernel, artifacts) for _ in range(n)]
    rows: dict[str, list[float]] = {}
    for wall, result in runs:
        for name, value in {**phases(result), "labctl wall time": wall}.items():
            if value is not None:
                rows.setdefault(name, []).append(value)
    return {"medians": {k: statistics.median(v) for k, v in rows.items()},
            "verdicts": sorted({f"{r['outcome']}{'' if r['passed'] else ' (FAILED: ' + r['reason'] + ')'}"
                                for _, r in runs})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1, help="repetitions of each (a distro run takes minutes)")
    parser.add_argument("--kernel", default="debian-6.12")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kexec-lab-bench-") as tmp:
        distro = measure(DISTRO, args.kernel, args.n, Path(tmp))
        helper = measure(HELPER, args.kernel, args.n, Path(tmp))
    print(f"{args.kernel}, n={args.n}, medians in seconds: {DISTRO[0]} vs {HELPER[0]} "
          f"{' '.join(HELPER[1])}")
    print(f"  {'':26}{'distro stack':>14}{'lab helper':>14}{'ratio':>8}")
    for name in distro["medians"]:
        a, b = distro["medians"][name], helper["medians"].get(name)
        print(f"  {name:26}{a:14.1f}" + (f"{b:14.1f}{a / b:8.1f}" if b else f"{'-':>14}{'-':>8}"))
    print(f"  verdicts, distro stack: {', '.join(distro['verdicts'])}")
    print(f"  verdicts, lab helper:   {', '.join(helper['verdicts'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
