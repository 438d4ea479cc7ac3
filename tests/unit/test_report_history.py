"""`labctl report history` over recorded nights (tests/data/nightly) and hand-made sequences."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from recorded import DATA
from test_report_diff import failing, infra, recorded, write_run

from labctl.cli import main
from labctl.report.history import PairHistory, histories, load_nights, note
from labctl.report.render import Cell

NIGHTLY = DATA / "nightly"


def history(*results) -> PairHistory:
    return PairHistory("k", "s", tuple(Cell(Path("/x"), r) if r else None for r in results))


def ok():
    return recorded("debian-6.12", "crash-corrupt")


@pytest.mark.parametrize("results, sequence, flips, text", [
    ((ok(), ok(), ok()), "P P P", [], ""),
    ((ok(), ok(), failing()), "P P F", [2], "changed in night 3"),
    ((ok(), failing(), ok()), "P F P", [1, 2], "FLAKY: 2 flips"),
    ((failing(), ok(), failing(), ok()), "F P F P", [1, 2, 3], "FLAKY: 3 flips"),
    # an infra error is no verdict: pass, error, pass is not a flip
    ((ok(), infra(), ok()), "P E P", [], "1 infra error(s)"),
    ((ok(), infra(), failing()), "P E F", [2], "changed in night 3; 1 infra error(s)"),
    ((None, ok(), None, failing()), ". P . F", [3], "changed in night 4"),
], ids=["steady", "changed", "flaky", "flaky-3", "error-not-a-flip", "error-then-fail", "gaps"])
def test_sequences_flips_and_notes(results, sequence, flips, text):
    h = history(*results)
    assert (h.sequence, h.flip_nights(), note(h)) == (sequence, flips, text)
    assert h.flaky == (len(flips) >= 2)


def test_median_leaves_out_errors():
    slow_error = infra()
    slow_error["timings"] = {"total": 500.0}
    a, b = ok(), ok()
    b["timings"] = dict(b["timings"], total=9.0)
    assert history(a, slow_error, b).median_seconds == statistics.median([4.542, 9.0])
    assert history(infra(), None).median_seconds is None


def test_recorded_nights_in_any_order(tmp_path, capsys):
    dirs = [str(NIGHTLY / n) for n in ("night-3", "night-1", "night-2")]
    nights = load_nights([Path(d) for d in dirs])
    assert [n.label for n in nights] == ["night-1", "night-2", "night-3"]  # by start time
    rows = {(h.kernel, h.scenario): h for h in histories(nights)}
    assert rows[("tiny-6.12-serial", "crash-corrupt")].sequence == "P F P"
    assert rows[("tiny-6.12-serial", "crash-corrupt")].flaky
    assert rows[("debian-6.12", "unload-then-panic")].sequence == ". . P"
    totals = [json.loads((NIGHTLY / n / "debian-6.12/crash-intact/result.json").read_text())["timings"]["total"]
              for n in ("night-1", "night-2", "night-3")]
    assert rows[("debian-6.12", "crash-intact")].median_seconds == statistics.median(totals)

    assert main(["report", "history", *dirs]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "3 nights, oldest first:"
    assert lines[1].endswith("night-1: night-1, started 2026-11-26T13:33:13Z")
    assert lines[4] == "2 flaky pair(s): debian-6.12 x crash-corrupt, tiny-6.12-serial x crash-corrupt"
    row = next(line for line in lines if line.startswith("tiny-6.12-serial x crash-corrupt "))
    assert row.split()[3:6] == ["P", "F", "P"] and row.endswith("FLAKY: 2 flips")
    median = f"{statistics.median(totals):.1f} s"
    assert next(line for line in lines if line.startswith("debian-6.12 x crash-intact ")).endswith(median)


def test_history_needs_two_nights(tmp_path, capsys):
    run = write_run(tmp_path / "run", [ok()])
    assert main(["report", "history", str(run)]) == 2
    assert "two or more run directories" in capsys.readouterr().err
