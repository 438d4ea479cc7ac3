"""Matrix reports on recorded result.json files and hand-made variants of them."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from bs4 import BeautifulSoup
from recorded import golden
from recorded import result as recorded

from labctl.cli import main
from labctl.errors import ConfigError
from labctl.report.render import (
    ERROR,
    FAIL,
    PASS,
    XFAIL,
    XPASS,
    classify,
    evidence_summary,
    exit_code,
    junit_xml,
    load_cells,
    report_html,
    summary_md,
    write_reports,
)


def _fail(kernel="debian-6.12"):
    r = copy.deepcopy(recorded(kernel, "crash-intact"))
    r["scenario"]["name"] = "intact-expect-refused"
    r.update(expected="purgatory-refused", passed=False,
             reason="expected purgatory-refused, got capture-booted")
    return r


def _error(kernel="debian-6.1"):
    r = copy.deepcopy(recorded(kernel, "crash-corrupt"))
    r.update(outcome="infra-error", passed=False, reason="the guest never booted", evidence={})
    r["matrix"] = {"retries": [{"attempt": 1, "outcome": "infra-error",
                                "reason": "QEMU exited early", "directory": "attempt-1"}]}
    return r


def _expect_fail(result, why="digest skips this segment"):
    result = copy.deepcopy(result)
    result["matrix"] = {"expect_fail": why, "retries": []}
    return result


def write_tree(root: Path, results: list[dict], with_logs: bool = True) -> Path:
    """Lay results out as a run directory: <kernel>/<scenario>/result.json (+ serial.log)."""
    for r in results:
        d = root / r["kernel"]["name"] / r["scenario"]["name"]
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(r))
        if with_logs:
            (d / "serial.log").write_text("[   0.100] Linux version\n")
    return root


@pytest.fixture
def mixed(tmp_path):
    """pass x2, fail, error (retried), xfail, xpass over two kernels."""
    results = [recorded("debian-6.12", "crash-corrupt"), recorded("debian-6.12", "crash-intact"),
               _fail("debian-6.12"), _error("debian-6.1"),
               _expect_fail(_fail("debian-6.1")), _expect_fail(recorded("debian-6.1", "crash-intact"))]
    root = write_tree(tmp_path / "run", results)
    return load_cells([root]), root


def test_classify_every_status():
    assert classify(recorded("debian-6.12", "crash-corrupt")) == PASS
    assert classify(_fail()) == FAIL
    assert classify(_error()) == ERROR
    assert classify(_expect_fail(_fail())) == XFAIL
    assert classify(_expect_fail(recorded("debian-6.1", "crash-intact"))) == XPASS
    assert classify(_expect_fail(_error())) == ERROR  # an error is never an expected failure
    assert classify({"outcome": None, "passed": False}) == ERROR


def test_evidence_summary_names_what_was_seen():
    corrupt = evidence_summary(recorded("debian-6.12", "crash-corrupt"))
    assert "RIP 0x3dffb12f" in corrupt and "purgatory +0x12f" in corrupt and "ebfe" in corrupt
    assert "corrupted 16 bytes of kernel at 0x3ad8c3e0 (flip)" in corrupt
    intact = evidence_summary(recorded("debian-6.1", "crash-intact"))
    assert "/proc/vmcore" in intact and "ET_CORE" in intact
    assert evidence_summary(_fail()).startswith("expected purgatory-refused, got capture-booted")


def test_load_cells_skips_earlier_attempts_and_keeps_the_latest_duplicate(tmp_path):
    first = write_tree(tmp_path / "a", [_error()])
    retry = first / "debian-6.1" / "crash-corrupt" / "attempt-1"
    retry.mkdir()
    (retry / "result.json").write_text(json.dumps({**_error(), "reason": "first attempt"}))
    later = copy.deepcopy(recorded("debian-6.1", "crash-corrupt"))
    later["started_at"] = "2099-01-01T00:00:00Z"
    second = write_tree(tmp_path / "b", [later])
    cells = load_cells([first, second])
    assert len(cells) == 1 and cells[0].status == PASS and cells[0].directory.is_relative_to(second)
    assert len(load_cells([first])) == 1 and load_cells([first])[0].result["reason"] != "first attempt"


def test_load_cells_names_a_broken_file(tmp_path):
    (tmp_path / "k" / "s").mkdir(parents=True)
    (tmp_path / "k" / "s" / "result.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"k/s/result.json: not a pair's result.json"):
        load_cells([tmp_path])


def test_junit_counts_and_kinds(mixed):
    cells, root = mixed
    tree = ET.fromstring(ET.tostring(junit_xml(cells, root).getroot()))
    assert (tree.get("tests"), tree.get("failures"), tree.get("errors"), tree.get("skipped")) == \
        ("6", "2", "1", "1")
    suites = {s.get("name"): s for s in tree.iter("testsuite")}
    assert sorted(suites) == ["debian-6.1", "debian-6.12"]
    cases = {(c.get("classname"), c.get("name")): c for c in tree.iter("testcase")}
    assert cases[("debian-6.12", "intact-expect-refused")].find("failure").get("type") == "verdict-mismatch"
    error = cases[("debian-6.1", "crash-corrupt")].find("error")
    assert error.get("type") == "infra-error"
    assert error.get("message").splitlines() == [
        "the guest never booted", "reproduce: labctl run crash-corrupt --kernel debian-6.1",
        "inspect before the trigger: labctl console crash-corrupt --kernel debian-6.1 --stop-at loaded",
        "serial log: debian-6.1/crash-corrupt/serial.log"]
    xfail = cases[("debian-6.1", "intact-expect-refused")].find("skipped")
    assert xfail.get("type") == "pytest.xfail" and "digest skips this segment" in xfail.get("message")
    assert "unexpectedly passed" in cases[("debian-6.1", "crash-intact")].find("failure").get("message")
    passed = cases[("debian-6.12", "crash-corrupt")]
    assert passed.find("failure") is None and passed.find("error") is None
    assert "RIP 0x3dffb12f" in passed.find("system-out").text
    attachment = passed.find("system-out").text.splitlines()[1]
    assert attachment == "[[ATTACHMENT|debian-6.12/crash-corrupt/serial.log]]"
    assert (root / "debian-6.12/crash-corrupt/serial.log").is_file()
    props = {p.get("name"): p.get("value") for p in cases[("debian-6.1", "crash-corrupt")].iter("property")}
    assert props["attempts"] == "2" and props["outcome"] == "infra-error"


def test_summary_is_a_grid_with_kernels_as_columns(mixed):
    cells, root = mixed
    text = summary_md(cells, root)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| scenario"))
    assert header == "| scenario | debian-6.1 | debian-6.12 |"
    grid = lines[lines.index(header) + 2:]
    rows = {line.split(" | ")[0][2:]: line for line in grid if line.startswith("| ")}
    assert "| debian-6.1 | 0 | 0 | 1 | 1 | 1 | 0 |" in lines  # per kernel: a column per status
    assert set(rows) == {"crash-corrupt", "crash-intact", "intact-expect-refused"}
    corrupt = rows["crash-corrupt"].split(" | ")
    assert "ERROR infra-error" in corrupt[1] and "retried" in corrupt[1]
    assert "PASS purgatory-refused, 4.5 s" in corrupt[2]
    assert "XFAIL" in rows["intact-expect-refused"].split(" | ")[1]
    assert "FAIL capture-booted (expected purgatory-refused)" in rows["intact-expect-refused"].split(" | ")[2]
    assert "XPASS" in rows["crash-intact"].split(" | ")[1]
    assert "6 pairs: 2 pass, 1 fail, 1 error, 1 xfail, 1 xpass" in text
    assert "expected failure: digest skips this segment" in text
    assert "retried once after infra-error: QEMU exited early" in text


def test_html_grid_cells_links_and_timeline(mixed):
    cells, root = mixed
    soup = BeautifulSoup(report_html(cells, root), "html.parser")
    assert [th.text for th in soup.select("th.kernel")] == ["debian-6.1", "debian-6.12"]
    tds = soup.select("td.cell[data-status]")
    assert sorted(td["data-status"] for td in tds) == sorted([PASS, PASS, FAIL, ERROR, XFAIL, XPASS])
    for td in tds:
        for link in td.select("a"):
            assert (root / link["href"]).is_file(), link["href"]
    corrupt = soup.select_one('td[data-kernel="debian-6.12"][data-scenario="crash-corrupt"]')
    widths = [float(s["style"].split(":")[1].rstrip("%")) for s in corrupt.select(".timeline span")]
    assert [s["class"][0] for s in corrupt.select(".timeline span")][:2] == ["phase-boot", "phase-load"]
    assert sum(widths) == pytest.approx(100, abs=0.1)
    assert "boot 2.47 s" in corrupt.select_one(".phases").text
    assert soup.select_one('td[data-status="xfail"] .xfail-reason').text.endswith("digest skips this segment")
    assert "QEMU exited early" in soup.select_one('td[data-status="error"] .retry').text
    assert [td["data-status"] for td in soup.select("td.cell") if td.select(".badge.retried")] == [ERROR]
    assert not soup.find_all(["script", "link"]) and not soup.select("[src]")  # self-contained


def test_html_escapes_what_it_shows(tmp_path):
    r = _fail()
    r["reason"] = "<script>alert(1)</script>"
    root = write_tree(tmp_path, [r])
    html = report_html(load_cells([root]), root)
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_exit_code_orders_failure_over_error(mixed, tmp_path):
    cells, _ = mixed
    assert exit_code(cells) == 1
    assert exit_code([c for c in cells if c.status in (PASS, XFAIL, ERROR)]) == 3
    assert exit_code([c for c in cells if c.status in (PASS, XFAIL)]) == 0


def test_report_merge_combines_shards(tmp_path, capsys):
    shard1 = write_tree(tmp_path / "shard-1", [recorded("debian-6.12", "crash-corrupt")])
    shard2 = write_tree(tmp_path / "shard-2", [recorded("debian-6.1", "crash-intact")])
    out = tmp_path / "merged"
    assert main(["report", "merge", str(shard1), str(shard2), "--out", str(out)]) == 0
    assert "2 pairs: 2 pass" in capsys.readouterr().out
    tree = ET.parse(out / "junit.xml").getroot()
    assert sorted(c.get("classname") for c in tree.iter("testcase")) == ["debian-6.1", "debian-6.12"]
    soup = BeautifulSoup((out / "report.html").read_text(), "html.parser")
    hrefs = [a["href"] for a in soup.select("a.serial")]
    assert sorted(hrefs) == ["../shard-1/debian-6.12/crash-corrupt/serial.log",
                             "../shard-2/debian-6.1/crash-intact/serial.log"]
    assert all((out / h).is_file() for h in hrefs)
    assert "| crash-corrupt | — | ✅ PASS" in (out / "summary.md").read_text()


def test_report_merge_of_nothing_is_a_usage_error(tmp_path, capsys):
    assert main(["report", "merge", str(tmp_path)]) == 2
    assert "no result.json under" in capsys.readouterr().err


# ---------------------------------------------------------------- golden reports

def test_golden_junit_and_summary(mixed):
    """junit.xml and summary.md of every status, byte for byte (tests/data/golden/); the run
    directory's own path is replaced by RUN.  LAB_UPDATE_GOLDEN=1 rewrites them."""
    cells, root = mixed
    paths = write_reports(cells, root)
    for kind, name in (("junit", "report-junit.xml"), ("summary", "report-summary.md")):
        golden(name, paths[kind].read_text(encoding="utf-8").replace(str(root), "RUN"))
