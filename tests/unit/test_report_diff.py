"""`labctl report diff`, `report merge --baseline`, `matrix --baseline`: every kind of change on
hand-made variants of recorded result.json files, and golden diff.md files from recorded nights
(tests/data/nightly, a real tiny-6.12-serial + debian-6.12 matrix run three times)."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
from bs4 import BeautifulSoup
from recorded import DATA, golden
from recorded import result as recorded

from labctl.campaigns.matrix import Pair, scope_baseline, shard_of
from labctl.cli import main
from labctl.errors import ConfigError
from labctl.report.diff import (
    CHANGED,
    FIXED,
    INFRA,
    REGRESSED,
    Run,
    diff_md,
    diff_runs,
    kernel_version,
    load_run,
    slower_phases,
    verdict_change,
)
from labctl.report.render import ERROR, FAIL, PASS, XFAIL, XPASS, Cell, load_cells
from labctl.result import Outcome

NIGHTLY = DATA / "nightly"
REFUSED = "expected purgatory-refused, got capture-booted"


def variant(kernel: str, scenario: str, **changes) -> dict:
    r = copy.deepcopy(recorded(kernel, scenario))
    r.update(changes)
    return r


def failing(kernel="debian-6.12", scenario="crash-corrupt") -> dict:
    return variant(kernel, scenario, outcome=Outcome.CAPTURE_BOOTED, passed=False, reason=REFUSED)


def infra(kernel="debian-6.12", scenario="crash-corrupt") -> dict:
    return variant(kernel, scenario, outcome=Outcome.INFRA_ERROR, passed=False, evidence={},
                   reason="the guest never booted")


def retried(result: dict) -> dict:
    result = copy.deepcopy(result)
    result["matrix"] = {"run_id": "r", "retries": [{"attempt": 1, "outcome": Outcome.INFRA_ERROR,
                                                    "reason": "QEMU exited early",
                                                    "directory": "attempt-1"}]}
    return result


def expect_fail(result: dict) -> dict:
    result = copy.deepcopy(result)
    result["matrix"] = {"expect_fail": "known", "retries": []}
    return result


def cell(result: dict) -> Cell:
    return Cell(Path("/nonexistent"), result)


def write_run(root: Path, results: list[dict], run_id: str | None = None) -> Path:
    """A run directory as labctl matrix leaves it: pairs with result.json and serial.log."""
    for r in results:
        d = root / r["kernel"]["name"] / r["scenario"]["name"]
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(r))
        (d / "serial.log").write_text("[   0.100] Linux version\n")
    if run_id:
        (root / "matrix.json").write_text(json.dumps({"run_id": run_id}))
    return root


def run_of(label: str, results: list[dict]) -> Run:
    return Run(label, [cell(r) for r in results])


@pytest.mark.parametrize("before, after, kind", [
    (recorded("debian-6.12", "crash-corrupt"), failing(), REGRESSED),
    (failing(), recorded("debian-6.12", "crash-corrupt"), FIXED),
    (infra(), failing(), REGRESSED),  # the last verdict seen was not a failure
    (expect_fail(failing()), expect_fail(recorded("debian-6.12", "crash-corrupt")), REGRESSED),  # xpass
    (recorded("debian-6.12", "crash-corrupt"), infra(), INFRA),
    (infra(), recorded("debian-6.12", "crash-corrupt"), INFRA),
    (failing(), infra(), INFRA),
    (recorded("debian-6.12", "crash-corrupt"), expect_fail(failing()), CHANGED),  # now an xfail
    # both pass, another outcome: the scenario's expectation changed with the kernel's behaviour
    (recorded("debian-6.12", "crash-corrupt"),
     variant("debian-6.12", "crash-corrupt", outcome=Outcome.CAPTURE_BOOTED, expected=Outcome.CAPTURE_BOOTED), CHANGED),
    (recorded("debian-6.12", "crash-corrupt"), recorded("debian-6.12", "crash-corrupt"), None),
    (failing(), failing(), None),
], ids=["pass-fail", "fail-pass", "error-fail", "xfail-xpass", "pass-error", "error-pass",
        "fail-error", "pass-xfail", "pass-pass-outcome", "same-pass", "same-fail"])
def test_verdict_change_kinds(before, after, kind):
    assert verdict_change(cell(before), cell(after)) == kind


def test_slower_needs_both_half_again_and_a_second():
    base = recorded("debian-6.12", "crash-intact")  # boot 2.629, load 0.76, panic_to_verdict 3.483
    timings = dict(base["timings"], boot=3.7, load=1.9, panic_to_verdict=5.0, total=12.2)
    # boot +1.07 s but +41 %: no; load +150 % but +1.14 s: yes; panic +1.52 s, +44 %: no
    phases = slower_phases(cell(base), cell(variant("debian-6.12", "crash-intact", timings=timings)))
    assert phases == (("load", 0.76, 1.9), ("total", 7.008, 12.2))
    small = dict(base["timings"], load=1.5)  # +97 % but only +0.74 s
    assert slower_phases(cell(base), cell(variant("debian-6.12", "crash-intact", timings=small))) == ()


def test_kernel_version_is_the_package_else_the_release():
    assert kernel_version(cell(recorded("debian-6.1", "crash-intact"))) == \
        "linux-image-6.1.0-56-cloud-amd64 6.1.192-2"
    recipe = variant("debian-6.1", "crash-intact")
    recipe["kernel"] = {"name": "tiny", "release": "6.12.117-lab-0123abcd"}
    assert kernel_version(cell(recipe)) == "6.12.117-lab-0123abcd"
    assert kernel_version(cell({"kernel": {"name": "x"}, "scenario": {"name": "s"}})) is None


def every_kind() -> tuple[list[dict], list[dict]]:
    """Baseline and new results with one pair for each kind of change, and one unchanged."""
    upload = variant("debian-6.1", "crash-intact")
    upload["kernel"] = dict(upload["kernel"], version="6.1.193-1", package="linux-image-6.1.0-57-cloud-amd64")
    slow = variant("debian-6.12", "crash-intact",
                   timings=dict(recorded("debian-6.12", "crash-intact")["timings"], boot=4.5))
    base = [recorded("debian-6.12", "crash-corrupt"), recorded("debian-6.12", "crash-intact"),
            recorded("debian-6.12", "unload-then-panic"), failing("debian-6.12", "crash-corrupt-kexec-load"),
            recorded("debian-6.1", "crash-intact"), retried(recorded("debian-6.1", "unload-then-panic")),
            recorded("debian-6.1", "crash-corrupt-kexec-load")]
    new = [recorded("debian-6.12", "crash-corrupt-kexec-load"), slow, failing(),
           variant("debian-6.12", "unload-then-panic", outcome=Outcome.CAPTURE_BOOTED, expected=Outcome.CAPTURE_BOOTED,
                   reason="capture-booted as expected"),
           upload, recorded("debian-6.1", "unload-then-panic"), retried(recorded("debian-6.1", "crash-corrupt"))]
    return base, new


def test_diff_finds_every_kind_of_change():
    base, new = every_kind()
    diff = diff_runs(run_of("night-1", base), run_of("night-2", new))
    assert [(v.kind, v.new.kernel, v.new.scenario) for v in diff.verdicts] == [
        (REGRESSED, "debian-6.12", "crash-corrupt"),  # regressions first, whatever their name
        (FIXED, "debian-6.12", "crash-corrupt-kexec-load"),
        (CHANGED, "debian-6.12", "unload-then-panic")]
    assert [(k.kernel, k.base, k.new) for k in diff.kernels] == [
        ("debian-6.1", ("linux-image-6.1.0-56-cloud-amd64 6.1.192-2",),
         ("linux-image-6.1.0-56-cloud-amd64 6.1.192-2", "linux-image-6.1.0-57-cloud-amd64 6.1.193-1"))]
    assert [(s.new.scenario, s.phases) for s in diff.slower] == [("crash-intact", (("boot", 2.629, 4.5),))]
    assert [(r.side, r.cell.kernel, r.cell.scenario) for r in diff.retried] == [
        ("baseline", "debian-6.1", "unload-then-panic"), ("now", "debian-6.1", "crash-corrupt")]
    assert [(c.kernel, c.scenario) for c in diff.only_new] == [("debian-6.1", "crash-corrupt")]
    assert [(c.kernel, c.scenario) for c in diff.only_base] == [("debian-6.1", "crash-corrupt-kexec-load")]
    assert diff.exit_code == 1


def test_no_regression_is_exit_0_even_with_changes_and_old_failures():
    base, new = every_kind()
    base[0] = failing()  # crash-corrupt was already failing: not a regression tonight
    diff = diff_runs(run_of("a", base), run_of("b", new))
    assert diff.regressed == [] and diff.exit_code == 0 and diff.verdicts


def test_the_same_run_twice_changes_nothing():
    base, _ = every_kind()
    diff = diff_runs(run_of("a", base), run_of("a", copy.deepcopy(base)))
    assert (diff.verdicts, diff.kernels, diff.slower, diff.only_base, diff.only_new) == ([], [], [], [], [])
    assert [r.side for r in diff.retried] == ["baseline", "now"]  # a retry is news in either run
    quiet = [r for r in base if not r.get("matrix")]
    assert diff_md(diff_runs(run_of("a", quiet), run_of("b", quiet)), Path("/")).endswith(
        "in the baseline: no change.\n\nNothing changed.\n")


def test_an_error_is_never_timed():
    slow_error = dict(infra(), timings={"boot": 60.0, "total": 90.0})
    err_before = dict(infra(), timings={"boot": 1.0, "total": 2.0})
    assert diff_runs(run_of("a", [err_before]), run_of("b", [slow_error])).slower == []


# ---------------------------------------------------------------- golden diff.md

def test_golden_every_kind(tmp_path):
    base, new = every_kind()
    write_run(tmp_path / "night-1", base, "night-1")
    write_run(tmp_path / "night-2", new, "night-2")
    out = tmp_path / "report"
    code = main(["report", "diff", str(tmp_path / "night-1" / "matrix.json"), str(tmp_path / "night-2"),
                 "--out", str(out)])
    assert code == 1
    text = (out / "diff.md").read_text()
    golden("diff-every-kind.md", text)
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections == ["## Verdict changes", "## Kernel versions",
                        "## Slower (a phase > 50 % and > 1 s slower)", "## Passed only on retry",
                        "## In one run only"]
    first = next(line for line in text.splitlines() if line.startswith("- "))
    assert first.startswith("- **debian-6.12 x crash-corrupt**: REGRESSED: PASS purgatory-refused -> "
                            "FAIL capture-booted (expected purgatory-refused)")
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert len(links) == 11 and all((out / link).is_file() for link in links), links


def recorded_nights(tmp_path: Path) -> Path:
    """The recorded nights, copied so that the reports written beside them stay in tmp."""
    shutil.copytree(NIGHTLY, tmp_path / "nightly")
    return tmp_path / "nightly"


def test_golden_recorded_regression(tmp_path, capsys):
    nights = recorded_nights(tmp_path)
    out = tmp_path / "report"
    assert main(["report", "diff", str(nights / "night-1"), str(nights / "night-2"), "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "REGRESSED tiny-6.12-serial x crash-corrupt: PASS purgatory-refused -> FAIL purgatory-refused " \
           "(expected capture-booted)" in printed
    golden("diff-night-1-night-2.md", (out / "diff.md").read_text())
    assert main(["report", "diff", str(nights / "night-2"), str(nights / "night-3"), "--out", str(out)]) == 0
    golden("diff-night-2-night-3.md", (out / "diff.md").read_text())


# ---------------------------------------------------------------- report.html

def test_html_badges_and_baseline_links(tmp_path):
    base, new = every_kind()
    write_run(tmp_path / "night-1", base, "night-1")
    write_run(tmp_path / "night-2", new, "night-2")
    out = tmp_path / "report"
    main(["report", "diff", str(tmp_path / "night-1"), str(tmp_path / "night-2"), "--out", str(out)])
    soup = BeautifulSoup((out / "report.html").read_text(), "html.parser")
    changed = {(td["data-kernel"], td["data-scenario"]): td for td in soup.select("td[data-change]")}
    assert {k: td["data-change"] for k, td in changed.items()} == {
        ("debian-6.12", "crash-corrupt"): "regressed", ("debian-6.12", "crash-corrupt-kexec-load"): "fixed",
        ("debian-6.12", "unload-then-panic"): "changed", ("debian-6.12", "crash-intact"): "slower",
        ("debian-6.1", "crash-corrupt"): "new"}
    regressed = changed[("debian-6.12", "crash-corrupt")]
    assert regressed.select_one(".change-regressed").text == "regressed: was PASS purgatory-refused"
    baseline = regressed.select_one("a.baseline-serial")["href"]
    assert baseline == "../night-1/debian-6.12/crash-corrupt/serial.log" and (out / baseline).is_file()
    assert regressed.select_one("a.serial")["href"] == "../night-2/debian-6.12/crash-corrupt/serial.log"
    assert changed[("debian-6.1", "crash-corrupt")].select_one("a.baseline-serial") is None
    unchanged = soup.select_one('td[data-kernel="debian-6.1"][data-scenario="unload-then-panic"]')
    assert not unchanged.has_attr("data-change") and not unchanged.select(".change")
    header = {th.contents[0]: th for th in soup.select("th.kernel")}
    assert "6.1.193-1" in header["debian-6.1"].select_one(".kernel-changed").text
    assert header["debian-6.12"].select_one(".kernel-changed") is None
    section = soup.select_one("#changes")
    assert section.h2.text == "Since night-1"
    assert [h.text for h in section.select("h3")][0] == "Verdict changes"
    assert section.select_one("li").text.startswith("debian-6.12 x crash-corrupt: REGRESSED")
    for link in soup.select("a"):
        assert (out / link["href"]).is_file(), link["href"]
    assert not soup.find_all(["script", "link"]) and not soup.select("[src]")  # still self-contained


def test_html_without_a_baseline_has_no_change_marks(tmp_path):
    root = write_run(tmp_path / "run", [recorded("debian-6.12", "crash-corrupt")])
    assert main(["report", "merge", str(root), "--out", str(tmp_path / "out")]) == 0
    soup = BeautifulSoup((tmp_path / "out" / "report.html").read_text(), "html.parser")
    assert soup.select("#changes, .change, [data-change], .baseline-serial") == []
    assert not (tmp_path / "out" / "diff.md").exists()


# ---------------------------------------------------------------- CLI

def test_merge_with_a_baseline_writes_the_diff(tmp_path, capsys):
    base, new = every_kind()
    night1 = write_run(tmp_path / "night-1", base, "night-1")
    shard_a = write_run(tmp_path / "shards" / "a", new[:3])
    write_run(tmp_path / "shards" / "b", new[3:])
    out = tmp_path / "merged"
    assert main(["report", "merge", str(tmp_path / "shards"), "--out", str(out), "--baseline", str(night1)]) == 1
    printed = capsys.readouterr().out
    assert "since night-1: 1 regressed, 1 fixed" in printed
    text = (out / "diff.md").read_text()
    assert text.startswith("# What changed: night-1 -> shards (")
    assert "](../shards/a/debian-6.12/crash-corrupt/serial.log)" in text and shard_a.is_dir()
    assert len(load_cells([tmp_path / "shards"])) == 7


def test_diff_names_bad_input(tmp_path, capsys):
    run = write_run(tmp_path / "run", [recorded("debian-6.12", "crash-corrupt")])
    assert main(["report", "diff", str(tmp_path / "missing"), str(run)]) == 2
    assert "missing: not a run directory or matrix.json" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", "diff", str(tmp_path / "empty"), str(run)]) == 2
    assert "no result.json under it" in capsys.readouterr().err
    (run / "matrix.json").write_text("[]")
    with pytest.raises(ConfigError, match=r"run/matrix.json: not a matrix.json"):
        load_run(run)


def test_matrix_baseline_is_checked_before_any_guest_starts(tmp_path, capsys):
    code = main(["matrix", "--kernels", "debian-6.12", "--scenarios", "crash-intact",
                 "--baseline", str(tmp_path / "no-such-run"), "--artifacts", str(tmp_path / "art")])
    assert code == 2 and "no-such-run: not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "art").exists()


def test_statuses_named_in_diff_md():
    """Every status a pair can have reads as its report label in diff.md."""
    statuses = {PASS: recorded("debian-6.12", "crash-corrupt"), FAIL: failing(), ERROR: infra(),
                XFAIL: expect_fail(failing()), XPASS: expect_fail(recorded("debian-6.12", "crash-corrupt"))}
    for status, result in statuses.items():
        text = diff_md(diff_runs(run_of("a", []), run_of("b", [result])), Path("/"))
        assert f"new pair: {status.upper()} {result['outcome']}" in text


def test_matrix_baseline_is_scoped_to_what_the_run_selects():
    """`matrix --shard 1/2 --baseline` must not call the other shard's pairs removed."""
    base = run_of("night-1", [recorded(k, s) for k in ("debian-6.12", "debian-6.1")
                              for s in ("crash-corrupt", "crash-intact", "unload-then-panic")])
    keys = [(c.kernel, c.scenario) for c in base.cells]
    mine = [Pair(k, s, Path(f"{s}.yaml")) for k, s in keys if shard_of(f"{k}/{s}", 2) == 1]
    scoped = scope_baseline(base, mine, None, None, (1, 2))
    assert sorted((c.kernel, c.scenario) for c in scoped.cells) == sorted((p.kernel, p.scenario) for p in mine)
    assert 0 < len(mine) < len(keys) and scoped.label == "night-1"
    one = scope_baseline(base, [Pair("debian-6.1", "crash-intact", Path("x"))], ["debian-6.1"], ["crash-intact"],
                         (1, 1))
    assert [(c.kernel, c.scenario) for c in one.cells] == [("debian-6.1", "crash-intact")]
    # the full selection keeps a pair whose scenario file is gone: it shows as removed
    everything = scope_baseline(base, mine[:1], None, None, (1, 1))
    assert len(everything.cells) == len(keys)
    assert len(diff_runs(everything, run_of("night-2", [])).only_base) == len(keys)
