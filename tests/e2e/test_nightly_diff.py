"""Two real nights on the cheap recipe kernel with a deliberately changed expectation in
between: `labctl matrix --baseline` and `labctl report diff` both put the regressed pair first
and exit 1; report.html's badges and baseline links checked in headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from bs4 import BeautifulSoup
from test_matrix import chromium, run_dir

from conftest import ROOT, labctl

pytestmark = pytest.mark.e2e

KERNEL = "tiny-6.12-serial"


def tiny_lab(tmp_path: Path) -> Path:
    """lab.yaml's settings with only the tiny recipe kernel (absolute recipe path) and its
    own scenarios/: copies of crash-intact and crash-corrupt."""
    lab = tmp_path / "lab"
    (lab / "scenarios").mkdir(parents=True)
    for name in ("crash-intact", "crash-corrupt"):
        (lab / "scenarios" / f"{name}.yaml").write_text((ROOT / "scenarios" / f"{name}.yaml").read_text())
    data = yaml.safe_load((ROOT / "lab.yaml").read_text())
    entry = data["kernels"][KERNEL]
    data["kernels"] = {KERNEL: dict(entry, recipe=str(ROOT / entry["recipe"]))}
    data["default_kernel"] = KERNEL
    (lab / "lab.yaml").write_text(yaml.safe_dump(data))
    return lab / "lab.yaml"


def test_a_changed_expectation_is_the_first_line_of_the_diff(tmp_path, no_leaks):
    lab = tiny_lab(tmp_path)
    artifacts = str(tmp_path / "artifacts")
    night1 = labctl("--lab", str(lab), "matrix", "--jobs", "2", "--run-id", "night-1", "--artifacts", artifacts)
    assert night1.returncode == 0, night1.stdout + night1.stderr
    corrupt = lab.parent / "scenarios" / "crash-corrupt.yaml"
    scenario = yaml.safe_load(corrupt.read_text())
    scenario["expect"] = "capture-booted"  # tonight's expectation, wrong for this kernel
    corrupt.write_text(yaml.safe_dump(scenario))
    night2 = labctl("--lab", str(lab), "matrix", "--jobs", "2", "--run-id", "night-2", "--artifacts", artifacts,
                    "--baseline", str(run_dir(night1)))
    assert night2.returncode == 1, night2.stdout + night2.stderr
    assert re.search(r"^since night-1: 1 regressed(, 1 slower)?$", night2.stdout, re.MULTILINE), night2.stdout
    first = f"- **{KERNEL} x crash-corrupt**: REGRESSED: PASS purgatory-refused -> FAIL purgatory-refused " \
            "(expected capture-booted)"
    entries = [line for line in (run_dir(night2) / "diff.md").read_text().splitlines() if line.startswith("- ")]
    assert entries[0].startswith(first), entries

    out = tmp_path / "diff"
    again = labctl("report", "diff", str(run_dir(night1)), str(run_dir(night2) / "matrix.json"), "--out", str(out))
    assert again.returncode == 1, again.stdout + again.stderr
    diff_md = (out / "diff.md").read_text()
    assert [line for line in diff_md.splitlines() if line.startswith("- ")][0].startswith(first)
    links = re.findall(r"\]\(([^)]+)\)", diff_md)
    assert links and all((out / link).is_file() for link in links)

    dom = chromium("--dump-dom", (run_dir(night2) / "report.html").as_uri())
    assert dom.returncode == 0, dom.stderr
    soup = BeautifulSoup(dom.stdout, "html.parser")
    # crash-intact may carry a `slower` badge on a loaded host; no verdict badge
    changed = soup.select('td[data-change~="regressed"], td[data-change~="changed"], td[data-change~="fixed"]')
    assert [(td["data-scenario"], td["data-change"]) for td in changed] == [("crash-corrupt", "regressed")]
    assert changed[0].select_one(".change-regressed").text == "regressed: was PASS purgatory-refused"
    baseline = changed[0].select_one("a.baseline-serial")["href"]
    assert baseline == f"../night-1/{KERNEL}/crash-corrupt/serial.log"
    assert "Kernel panic" in (run_dir(night2) / baseline).read_text()  # last night's guest (forked: no boot)
    assert soup.select_one("#changes li").text.startswith(f"{KERNEL} x crash-corrupt: REGRESSED")
    intact = soup.select_one('td[data-scenario="crash-intact"]')
    assert intact["data-status"] == "pass" and intact.get("data-change") in (None, "slower")
