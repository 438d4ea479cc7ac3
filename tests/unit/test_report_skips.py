"""Skipped pairs and reproduction commands in every report, on a recorded skip
(tests/data/tiny-6.12-serial/crash-intact-cpu1: `labctl matrix` on a kernel without SMP)
and recorded verdicts."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from bs4 import BeautifulSoup
from recorded import result as recorded

from labctl.report.diff import FIXED, REGRESSED, SKIPPED, Run, diff_md, diff_runs, verdict_change
from labctl.report.history import Night, history_table
from labctl.report.render import (
    FAIL,
    PASS,
    SKIP,
    Cell,
    classify,
    exit_code,
    junit_xml,
    load_cells,
    report_html,
    summary_md,
)
from labctl.report.repro import repro
from labctl.result import Outcome, PairResult

DATA = Path(__file__).resolve().parents[1] / "data"
SKIPPED_PAIR = DATA / "tiny-6.12-serial" / "crash-intact-cpu1" / "result.json"


def skipped() -> dict:
    return json.loads(SKIPPED_PAIR.read_text())


def failing() -> dict:
    r = copy.deepcopy(recorded("debian-6.12", "crash-corrupt"))
    r.update(outcome="capture-booted", passed=False, reason="expected purgatory-refused, got capture-booted")
    return r


def lay_out(root: Path, results: list[dict]) -> list[Cell]:
    for r in results:
        d = root / r["kernel"]["name"] / r["scenario"]["name"]
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(r))
        (d / "serial.log").write_text("[   0.100] Linux version\n")
    return load_cells([root])


def test_a_skip_is_its_own_status_and_exits_0():
    assert classify(skipped()) == SKIP
    assert classify({**skipped(), "matrix": {"expect_fail": "listed"}}) == SKIP  # never an xfail/xpass
    result = PairResult.from_json(skipped())
    assert result.exit_code == 0 and result.outcome == Outcome.SKIPPED
    assert result.summary == ("tiny-6.12-serial x crash-intact-cpu1: SKIPPED: does not apply: machine.smp: "
                              "needs 2 CPUs (CONFIG_SMP=y), but CONFIG_SMP is not set (config file "
                              "/root/.cache/kexec-lab/kernel-builds/afda837a73dca4b2/config)")
    assert PairResult.from_json({**skipped(), "outcome": "requirement-unmet", "passed": False}).exit_code == 1


def test_reports_show_skips_and_how_to_reproduce_failures(tmp_path):
    cells = lay_out(tmp_path, [skipped(), failing(), recorded("debian-6.12", "crash-intact")])
    assert exit_code(cells) == 1
    assert exit_code([c for c in cells if c.status != FAIL]) == 0  # skips alone never fail a run
    tree = ET.fromstring(ET.tostring(junit_xml(cells, tmp_path).getroot()))
    assert tree.get("skipped") == "1" and tree.get("failures") == "1"
    cases = {c.get("name"): c for c in tree.iter("testcase")}
    skip = cases["crash-intact-cpu1"].find("skipped")
    assert skip.get("type") == "not-applicable" and "machine.smp: needs 2 CPUs" in skip.get("message")
    message = cases["crash-corrupt"].find("failure").get("message").splitlines()
    assert message[1:] == ["reproduce: labctl run crash-corrupt --kernel debian-6.12",
                           "inspect before the trigger: labctl console crash-corrupt --kernel debian-6.12 "
                           "--stop-at corrupted",
                           "serial log: debian-6.12/crash-corrupt/serial.log"]

    md = summary_md(cells, tmp_path)
    assert "| kernel | PASS | FAIL | ERROR | XFAIL | XPASS | SKIP |" in md
    assert "| tiny-6.12-serial | 0 | 0 | 0 | 0 | 0 | 1 |" in md
    assert "| crash-intact-cpu1 | — | ⏭️ SKIP |" in md
    assert "**tiny-6.12-serial x crash-intact-cpu1**: SKIP: does not apply: machine.smp" in md
    assert "  - reproduce: `labctl run crash-corrupt --kernel debian-6.12`" in md
    assert "  - [serial.log](debian-6.12/crash-corrupt/serial.log)" in md
    assert md.count("reproduce:") == 1  # passes and skips carry none

    soup = BeautifulSoup(report_html(cells, tmp_path), "html.parser")
    cell = soup.select_one('td[data-kernel="tiny-6.12-serial"][data-scenario="crash-intact-cpu1"]')
    assert "skip" in cell["class"] and "machine.smp" in cell.select_one(".summary").text
    assert "td.skip { background: #e4e4e4" in soup.style.text  # grey
    assert cell.select_one(".timeline") is None and cell.select_one(".status").parent.text == "SKIP"
    assert [a.text for a in cell.select(".links a")] == ["serial.log", "result.json"]
    red = soup.select_one('td[data-kernel="debian-6.12"][data-scenario="crash-corrupt"]')
    assert red.select_one(".repro-run").text == "labctl run crash-corrupt --kernel debian-6.12"
    assert red.select_one(".repro-console").text.endswith("--stop-at corrupted")
    assert soup.select_one('td[data-scenario="crash-intact"] .repro') is None


def test_repro_names_a_path_kernel_and_an_outside_scenario_by_path():
    r = copy.deepcopy(failing())
    r["scenario"] = {"name": "mine", "path": "/home/me/mine.yaml"}
    r["kernel"] = {"name": "Image", "bzimage": "/home/me/linux/arch/arm64/boot/Image", "arch": "arm64"}
    steps = repro(r, None)
    assert steps.run == "labctl run /home/me/mine.yaml --kernel /home/me/linux/arch/arm64/boot/Image --arch arm64"
    assert steps.console == ("labctl console /home/me/mine.yaml --kernel /home/me/linux/arch/arm64/boot/Image "
                             "--stop-at corrupted")
    assert steps.lines()[-1].startswith("inspect")  # no serial log: no line for it


def _cell(result: dict) -> Cell:
    return Cell(Path("/nowhere"), result)


def test_diff_lists_skip_changes_and_never_calls_a_skipped_failure_fixed():
    skip, fail, ok = _cell(skipped()), _cell(failing()), _cell(recorded("debian-6.12", "crash-corrupt"))
    for cell in (fail, ok):
        cell.result["kernel"], cell.result["scenario"] = skip.result["kernel"], skip.result["scenario"]
    assert verdict_change(fail, skip) == SKIPPED != FIXED
    assert verdict_change(ok, skip) == SKIPPED and verdict_change(skip, ok) == SKIPPED
    assert verdict_change(skip, fail) == REGRESSED
    diff = diff_runs(Run("night-1", [fail]), Run("night-2", [skip]))
    assert diff.headline() == "1 to or from skipped" and diff.exit_code == 0
    text = diff_md(diff, Path("/nowhere"))
    assert "SKIP: FAIL capture-booted (expected purgatory-refused) -> SKIP skipped" in text


def test_history_shows_and_counts_skips_without_calling_them_flips():
    skip, ok = _cell(skipped()), _cell(recorded("debian-6.12", "crash-corrupt"))
    ok.result["kernel"], ok.result["scenario"] = skip.result["kernel"], skip.result["scenario"]
    nights = [Night(Path(f"n{i}"), Run(f"night-{i}", [c]), f"2026-12-0{i}") for i, c in
              enumerate((ok, skip, ok), 1)]
    table = history_table(nights)
    assert "tiny-6.12-serial x crash-intact-cpu1  P s P" in table
    assert "1 skipped" in table and "FLAKY" not in table and "changed" not in table
    assert "s skipped" in table
    assert ok.status == PASS and skip.status == SKIP
