"""The pytest plugin's collection (no guest runs): opt-in, and one item per kernel x scenario."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from labctl.config.schema import load_lab

ROOT = Path(__file__).resolve().parents[2]


def collect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--co", "-q",
                           "scenarios", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def items(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith("scenarios/")]


def test_plain_pytest_collects_no_lab_items():
    proc = collect()
    assert proc.returncode == 5 and items(proc) == [], proc.stdout  # 5: no tests collected


def test_kernel_and_scenario_options_select_items():
    proc = collect("--lab-kernel", "debian-6.12", "--lab-kernel", "debian-6.1",
                   "--lab-scenario", "crash-intact")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert items(proc) == ["scenarios/crash-intact.yaml::debian-6.12",
                           "scenarios/crash-intact.yaml::debian-6.1"]


def test_lab_collects_every_scenario_on_every_kernel():
    proc = collect("--lab")
    lab = load_lab(ROOT / "lab.yaml")
    scenarios = sorted((ROOT / "scenarios").glob("*.yaml"))
    assert len(items(proc)) == len(scenarios) * len(lab.kernels)
    assert f"scenarios/{scenarios[0].name}::{sorted(lab.kernels)[0]}" in items(proc)


def test_unknown_kernel_is_named():
    proc = collect("--lab-kernel", "debian-9")
    assert proc.returncode != 0 and "--lab-kernel 'debian-9' is not in" in proc.stdout + proc.stderr
