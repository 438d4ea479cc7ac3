"""`labctl matrix`, `labctl report merge` and the pytest plugin on real guests; the HTML
report rendered by headless Chromium."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from bs4 import BeautifulSoup

from conftest import MARK, ROOT, labctl, marked_processes, shared_cache

pytestmark = pytest.mark.e2e

KERNELS = ["debian-6.12", "debian-6.1"]
SCENARIOS = ["crash-corrupt", "crash-intact"]
RESULT_LINE = re.compile(r"^matrix (\S+): (\d+) pairs in ([\d.]+) s: (.*)$", re.MULTILINE)
RAM_PATH = re.compile(r"mem-path=(\S+)/guest-ram")
MATRIX_MARK = secrets.token_hex(6)
WRONG_EXPECTATION = "load: {method: kexec_file_load}\nexpect: purgatory-refused\n"


def run_dir(run) -> Path:
    """The run directory a matrix printed (its junit.xml's folder)."""
    return Path(re.search(r"^  (\S+)/junit.xml$", run.stdout, re.MULTILINE)[1])


def make_lab(tmp_path: Path, scenarios: dict[str, str], boot_timeout: int = 90,
             expect_fail: dict[str, dict] | None = None) -> Path:
    """lab.yaml's settings with its own scenarios/, the two Debian kernels (debian-6.12 with
    the given expect_fail) and `truncated`, whose bzImage is cut short (QEMU or the guest
    fails on it: a real infrastructure error)."""
    lab = tmp_path / "lab"
    (lab / "scenarios").mkdir(parents=True)
    for name, text in scenarios.items():
        (lab / "scenarios" / f"{name}.yaml").write_text(text)
    bzimage = next((shared_cache() / "kernels").glob("linux-image-6.12*/boot/vmlinuz-*"))
    (lab / "bzImage-truncated").write_bytes(bzimage.read_bytes()[:1_000_000])
    data = yaml.safe_load((ROOT / "lab.yaml").read_text())
    data["timeouts"]["boot"] = boot_timeout
    data["kernels"] = {k: data["kernels"][k] for k in KERNELS}
    data["kernels"]["debian-6.12"]["expect_fail"] = expect_fail or {}
    data["kernels"]["truncated"] = {"path": "bzImage-truncated"}
    (lab / "lab.yaml").write_text(yaml.safe_dump(data))
    return lab / "lab.yaml"


def guest_run_dirs(mark: str) -> list[str]:
    """Run directories of the guests that carry a test's mark (not of QEMU probes)."""
    found = []
    for pid in marked_processes(mark):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if ram := RAM_PATH.search(cmd):
            found.append(ram[1])
    return found


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("chromium") or "chromium", "--headless", "--no-sandbox",
                           "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Both kernels x both core scenarios, two guests at a time."""
    artifacts = tmp_path_factory.mktemp("matrix")
    run = labctl("matrix", "--kernels", *KERNELS, "--scenarios", *SCENARIOS, "--jobs", "2",
                 "--artifacts", str(artifacts), env={MARK: MATRIX_MARK})
    return run, run_dir(run)


def test_matrix_runs_every_pair_two_at_a_time(matrix):
    run, directory = matrix
    assert run.returncode == 0, run.stdout + run.stderr
    run_id, pairs, _, counts = RESULT_LINE.search(run.stdout).groups()
    assert (pairs, counts) == ("4", "4 pass, 0 fail, 0 error, 0 xfail, 0 xpass, 0 skip")
    events = re.findall(r"\] (start|\d/4 done):? ", run.stderr)  # not the heartbeat lines
    assert events[:2] == ["start", "start"], run.stderr  # two guests before the first verdict
    assert [e for e in events if e != "start"] == ["1/4 done", "2/4 done", "3/4 done", "4/4 done"]
    assert "running: " in run.stderr
    assert marked_processes(MATRIX_MARK) == []  # no labctl child, no QEMU left
    plan = json.loads((directory / "matrix.json").read_text())
    assert plan["run_id"] == run_id == directory.name and len(plan["pairs"]) == 4
    for kernel in KERNELS:
        for scenario in SCENARIOS:
            result = json.loads((directory / kernel / scenario / "result.json").read_text())
            assert result["passed"] and result["run_id"] == run_id
            assert result["matrix"] == {"run_id": run_id, "shard": "1/1", "attempts": 1,
                                        "retries": [], "expect_fail": None}
            assert (directory / kernel / scenario / "serial.log").stat().st_size > 0


def test_matrix_junit_has_a_testcase_per_pair(matrix):
    _, directory = matrix
    root = ET.parse(directory / "junit.xml").getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "0", "0")
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    assert set(cases) == {(k, s) for k in KERNELS for s in SCENARIOS}
    refused = cases[("debian-6.1", "crash-corrupt")].find("system-out").text
    assert "parked at RIP" in refused and "[[ATTACHMENT|debian-6.1/crash-corrupt/serial.log]]" in refused


def test_matrix_summary_grid(matrix):
    _, directory = matrix
    lines = (directory / "summary.md").read_text().splitlines()
    assert "| scenario | debian-6.1 | debian-6.12 |" in lines
    corrupt = next(line for line in lines if line.startswith("| crash-corrupt |"))
    assert corrupt.count("PASS purgatory-refused") == 2


def test_report_html_renders_in_chromium(matrix, tmp_path):
    _, directory = matrix
    url = (directory / "report.html").as_uri()
    dom = chromium("--dump-dom", url)
    assert dom.returncode == 0, dom.stderr
    soup = BeautifulSoup(dom.stdout, "html.parser")
    assert [th.text for th in soup.select("th.kernel")] == ["debian-6.1", "debian-6.12"]
    assert [th.text for th in soup.select("th.scenario")] == SCENARIOS
    cells = soup.select("td.cell")
    assert len(cells) == 4 and {c["data-status"] for c in cells} == {"pass"}
    for cell in cells:
        assert len(cell.select(".timeline span")) >= 3  # boot, load, panic_to_verdict at least
        for link in cell.select("a.serial, a.result"):
            assert (directory / link["href"]).is_file()
    png = tmp_path / "report.png"
    shot = chromium("--window-size=1200,800", f"--screenshot={png}", url)
    assert shot.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot.stderr
    assert struct.unpack(">II", png.read_bytes()[16:24]) == (1200, 800)
    assert png.stat().st_size > 20_000  # a rendered grid, not a blank page


def test_infra_error_is_retried_once_and_is_an_error(tmp_path, no_leaks):
    lab = make_lab(tmp_path, {"crash-intact": (ROOT / "scenarios/crash-intact.yaml").read_text()},
                   boot_timeout=20)
    run = labctl("--lab", str(lab), "matrix", "--kernels", "truncated")
    assert run.returncode == 3, run.stdout + run.stderr
    assert "retrying once" in run.stderr
    directory = run_dir(run) / "truncated" / "crash-intact"
    result = json.loads((directory / "result.json").read_text())
    first = json.loads((directory / "attempt-1" / "result.json").read_text())
    assert result["outcome"] == first["outcome"] == "infra-error"
    assert result["matrix"]["attempts"] == 2
    assert result["matrix"]["retries"] == [{"attempt": 1, "outcome": "infra-error",
                                            "reason": first["reason"], "directory": "attempt-1"}]
    case = ET.parse(run_dir(run) / "junit.xml").getroot().find(".//testcase")
    assert case.find("error") is not None and case.find("failure") is None


def test_a_wrong_verdict_is_a_failure_never_retried_and_merges(tmp_path, no_leaks):
    lab = make_lab(tmp_path, {"intact-expect-refused": WRONG_EXPECTATION}, boot_timeout=20)
    failed = labctl("--lab", str(lab), "matrix", "--kernels", "debian-6.12")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "retrying" not in failed.stderr
    directory = run_dir(failed) / "debian-6.12" / "intact-expect-refused"
    result = json.loads((directory / "result.json").read_text())
    assert result["outcome"] == "capture-booted" and result["matrix"]["attempts"] == 1
    assert not (directory / "attempt-1").exists()
    broken = labctl("--lab", str(lab), "matrix", "--kernels", "truncated")
    assert broken.returncode == 3
    out = tmp_path / "merged"
    merged = labctl("report", "merge", str(run_dir(failed)), str(run_dir(broken)), "--out", str(out))
    assert merged.returncode == 1 and "2 pairs: 0 pass, 1 fail, 1 error" in merged.stdout
    root = ET.parse(out / "junit.xml").getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "1", "1")
    assert "expected purgatory-refused, got capture-booted" in (out / "summary.md").read_text()


def test_pytest_plugin_runs_pairs_with_xdist_and_junitxml(tmp_path, no_leaks):
    xml = tmp_path / "lab.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2",
                           "scenarios", "--lab-scenario", "crash-intact", "--lab-kernel", "debian-6.12",
                           "--lab-kernel", "debian-6.1", f"--junitxml={xml}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout
    cases = ET.parse(xml).getroot().findall(".//testcase")
    assert sorted(c.get("name") for c in cases) == ["debian-6.1", "debian-6.12"]
    for case in cases:
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert props["outcome"] == "capture-booted" and Path(props["serial_log"]).is_file()


def test_pytest_plugin_reports_an_infra_error_as_error(tmp_path, no_leaks):
    lab = make_lab(tmp_path, {"crash-intact": (ROOT / "scenarios/crash-intact.yaml").read_text()},
                   boot_timeout=20)
    xml = tmp_path / "lab.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "labctl.pytest_plugin",
                           str(lab.parent / "scenarios"), "--lab-config", str(lab), "--lab-kernel", "truncated",
                           f"--junitxml={xml}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "1 error" in proc.stdout, proc.stdout + proc.stderr
    case = ET.parse(xml).getroot().find(".//testcase")
    assert case.find("error") is not None and case.find("failure") is None
    assert "crash-intact" in case.get("classname") and case.get("name") == "truncated"
    assert "QEMU" in case.find("error").get("message") or "guest" in case.find("error").get("message")


def test_sigterm_stops_every_guest_and_still_reports(tmp_path, no_leaks):
    proc = subprocess.Popen([sys.executable, "-m", "labctl", "matrix", "--kernels", "debian-6.12",
                             "--scenarios", *SCENARIOS, "--jobs", "2", "--artifacts", str(tmp_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(guest_run_dirs(os.environ[MARK])) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    run_dirs = guest_run_dirs(os.environ[MARK])
    proc.send_signal(signal.SIGTERM)
    assert len(run_dirs) == 2, "two guests should have been running"
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert [d for d in run_dirs if Path(d).exists()] == []  # sockets and RAM files removed
    assert "matrix interrupted" in err
    results = [json.loads(p.read_text()) for p in tmp_path.glob("*/debian-6.12/*/result.json")]
    assert sorted(r["scenario"]["name"] for r in results) == SCENARIOS
    assert {r["outcome"] for r in results} == {"interrupted"}
    assert all(r["matrix"]["retries"] == [] for r in results)
    root = ET.parse(next(tmp_path.glob("*/junit.xml"))).getroot()
    assert (root.get("tests"), root.get("errors")) == ("2", "2")


def test_expect_fail_is_an_xfail_and_an_unexpected_pass_fails(tmp_path, no_leaks):
    lab = make_lab(tmp_path, {"intact-expect-refused": WRONG_EXPECTATION,
                              "crash-intact": (ROOT / "scenarios/crash-intact.yaml").read_text()},
                   expect_fail={"intact-expect-refused": {"reason": "demo: known to fail",
                                                          "outcomes": ["capture-booted"]},
                                "crash-intact": {"reason": "demo: listed but passes",
                                                 "outcomes": ["purgatory-refused"]}})
    run = labctl("--lab", str(lab), "matrix", "--kernels", "debian-6.12", "--jobs", "2")
    assert run.returncode == 1, run.stdout + run.stderr  # the unexpected pass
    assert "2 pairs" in run.stdout and "0 fail, 0 error, 1 xfail, 1 xpass" in run.stdout
    summary = (run_dir(run) / "summary.md").read_text()
    assert "XFAIL capture-booted" in summary and "expected failure: demo: known to fail" in summary
    cases = {c.get("name"): c for c in ET.parse(run_dir(run) / "junit.xml").getroot().iter("testcase")}
    assert cases["intact-expect-refused"].find("skipped").get("type") == "pytest.xfail"
    assert "unexpectedly passed" in cases["crash-intact"].find("failure").get("message")
    xml = tmp_path / "lab.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "labctl.pytest_plugin",
                           "-n", "2", str(lab.parent / "scenarios"), "--lab-config", str(lab),
                           "--lab-kernel", "debian-6.12", f"--junitxml={xml}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "1 failed" in proc.stdout and "1 xfailed" in proc.stdout, proc.stdout
    assert "passed, but expect_fail says: demo: listed but passes" in proc.stdout


def test_ci_flow_emit_shards_then_merge_covers_every_pair_once(tmp_path, no_leaks):
    """What the nightly workflow does, on a kernel that fails fast: emit the job list, run
    each kernel x shard job as its own matrix, merge the shards."""
    intact = (ROOT / "scenarios/crash-intact.yaml").read_text()
    lab = make_lab(tmp_path, {f"s{i}": intact for i in range(4)}, boot_timeout=20)
    emitted = labctl("--lab", str(lab), "matrix", "--emit", "github", "--kernels", "truncated",
                     "--shards", "3")
    jobs = json.loads(emitted.stdout)["include"]
    assert sum(j["pairs"] for j in jobs) == 4
    shard_dirs = []
    for job in jobs:
        run = labctl("--lab", str(lab), "matrix", "--kernels", job["kernel"], "--shard",
                     f"{job['shard']}/{job['shards']}", "--jobs", "2", "--run-id", f"shard-{job['shard']}")
        assert run.returncode == 3 and f"{job['pairs']} pairs" in run.stdout, run.stdout + run.stderr
        shard_dirs.append(str(run_dir(run)))
    merged = labctl("report", "merge", *shard_dirs, "--out", str(tmp_path / "merged"))
    assert "4 pairs: 0 pass, 0 fail, 4 error" in merged.stdout
    cases = ET.parse(tmp_path / "merged" / "junit.xml").getroot().findall(".//testcase")
    assert sorted(c.get("name") for c in cases) == ["s0", "s1", "s2", "s3"]


def test_a_pair_past_its_deadline_is_stopped_as_an_infra_error(tmp_path, no_leaks):
    run = labctl("matrix", "--kernels", "debian-6.12", "--scenarios", "crash-intact", "--pair-timeout", "3",
                 "--artifacts", str(tmp_path))
    assert run.returncode == 3, run.stdout + run.stderr
    assert run.stderr.count("no verdict after 3 s; stopping it") == 2  # the attempt and its retry
    result = json.loads((run_dir(run) / "debian-6.12" / "crash-intact" / "result.json").read_text())
    assert result["outcome"] == "infra-error" and result["reason"].startswith("watchdog: no verdict within 3 s")
    assert result["matrix"]["attempts"] == 2
    assert result["matrix"]["retries"][0]["reason"].startswith("watchdog")
