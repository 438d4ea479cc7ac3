"""Reports over many pairs: merged JUnit XML, summary.md and a self-contained report.html.

Everything is read back from each pair's result.json, so a report can be
rebuilt later or merged from CI shards (`labctl report merge DIR...`) with no
lab, kernel or guest at hand.  A pair ends in one of six statuses: pass,
fail (a verdict mismatch), error (the lab broke, not the kernel), xfail (a
failure the kernel catalogue expects, `expect_fail`), xpass (an expected
failure that passed: a failure, since the catalogue is now wrong), or skip (the
scenario does not apply to the kernel: evidence/applicability.py).  Failing and
unexpected pairs carry the commands that reproduce them (repro.py).
"""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from labctl.errors import EXIT_FAILED, EXIT_INFRA, EXIT_PASSED, ConfigError
from labctl.report.repro import Repro, repro
from labctl.result import ERRORS, Outcome

PASS, FAIL, ERROR, XFAIL, XPASS, SKIP = "pass", "fail", "error", "xfail", "xpass", "skip"
STATUS_LABELS = {PASS: "PASS", FAIL: "FAIL", ERROR: "ERROR", XFAIL: "XFAIL", XPASS: "XPASS", SKIP: "SKIP"}
STATUS_MARKS = {PASS: "✅", FAIL: "❌", ERROR: "⚠️", XFAIL: "☑️", XPASS: "❗", SKIP: "⏭️"}
REPRODUCED = (FAIL, XPASS, ERROR)  # the statuses whose cells carry the commands to reproduce them
ERROR_OUTCOMES = {None, *ERRORS}
PHASES = ("boot", "load", "restore", "corrupt", "panic_to_verdict")  # restore: forked runs
ATTEMPT_PREFIX = "attempt-"
NO_CHANGE = {"badges": [], "baseline": {"serial": None, "result": None}}  # report.html without a baseline
REPORT_FILES = {"junit": "junit.xml", "summary": "summary.md", "html": "report.html"}
TEMPLATE = jinja2.Environment(
    loader=jinja2.PackageLoader("labctl.report", "templates"), autoescape=True,
    undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
).get_template("report.html.j2")


def classify(result: dict) -> str:
    """The status of one pair; an expected failure is read from result['matrix']."""
    if result.get("outcome") == Outcome.SKIPPED:
        return SKIP
    if result.get("outcome") in ERROR_OUTCOMES:
        return ERROR
    expected_to_fail = bool((result.get("matrix") or {}).get("expect_fail"))
    if result.get("passed"):
        return XPASS if expected_to_fail else PASS
    return XFAIL if expected_to_fail and not result.get("unexpected_failure") else FAIL


def evidence_summary(result: dict) -> str:
    """One line a person can act on: what was seen, not only what was concluded."""
    outcome = result.get("outcome")
    evidence = result.get("evidence") or {}
    verdict = evidence.get("verdict") or {}
    parts = [str(result.get("reason"))]
    if parked := verdict.get("parked"):
        parts.append(f"vCPU {parked['cpu']} parked at RIP {parked['rip']} (purgatory "
                     f"+{parked['purgatory_offset']}) on {parked['code'][:4]}, "
                     f"{parked['samples']} samples")
    if vmcore := verdict.get("vmcore"):
        parts.append(f"capture kernel {verdict.get('capture_release')} booted; /proc/vmcore "
                     f"{vmcore.get('size')} bytes, {vmcore.get('e_type')}, "
                     f"osrelease {vmcore.get('osrelease')}")
    if outcome == Outcome.LOAD_REJECTED:
        parts.append(f"kexec_file_load errno {verdict.get('errno')} ({verdict.get('strerror')})")
    if vcpus := verdict.get("vcpus"):
        parts.append("last vCPU positions " + ", ".join(f"cpu{v.get('cpu')}@{v.get('rip')}"
                                                        for v in vcpus))
    if corruption := evidence.get("corruption"):
        parts.append(f"corrupted {corruption['length']} bytes of {corruption['segment']['role']} "
                     f"at {corruption['address']} ({corruption['pattern']})")
    return "; ".join(parts)


@dataclass
class Cell:
    """One kernel x scenario pair as found on disk."""

    directory: Path
    result: dict

    @property
    def kernel(self) -> str:
        return self.result["kernel"]["name"]

    @property
    def scenario(self) -> str:
        return self.result["scenario"]["name"]

    @property
    def status(self) -> str:
        return classify(self.result)

    @property
    def matrix(self) -> dict:
        return self.result.get("matrix") or {}

    @property
    def seconds(self) -> float:
        return float((self.result.get("timings") or {}).get("total") or 0.0)

    def link(self, name: str, out_dir: Path) -> str | None:
        """A path to one of the pair's files, relative to the report that links it."""
        path = self.directory / name
        return os.path.relpath(path, out_dir) if path.exists() else None

    def repro(self, out_dir: Path) -> Repro | None:
        """The commands to reproduce a failing or unexpected pair; None for the others."""
        return repro(self.result, self.link("serial.log", out_dir)) if self.status in REPRODUCED else None

    def timeline(self) -> list[dict]:
        """Phases as shares of the total, for the HTML bar (the rest is 'other'); none for a
        pair that took no time (skipped before any guest)."""
        if not self.seconds:
            return []
        timings = self.result.get("timings") or {}
        total = self.seconds or 1.0
        phases: list[dict[str, Any]] = [{"name": p, "seconds": float(timings[p])}
                                        for p in PHASES if timings.get(p)]
        other = total - sum(p["seconds"] for p in phases)
        if other > 0.001:
            phases.append({"name": "other", "seconds": other})
        for phase in phases:
            phase["percent"] = round(100.0 * phase["seconds"] / total, 2)
        return phases


def load_cells(directories: list[Path]) -> list[Cell]:
    """Every pair's result.json under the given directories (earlier attempts excluded).

    A pair found twice (a shard re-run) keeps its latest start."""
    found: dict[tuple[str, str], Cell] = {}
    for directory in directories:
        if not Path(directory).is_dir():
            raise ConfigError(f"not a directory: {directory}")
        for path in sorted(Path(directory).rglob("result.json")):
            if any(part.startswith(ATTEMPT_PREFIX) for part in path.relative_to(directory).parts):
                continue
            try:
                cell = Cell(path.parent.resolve(), json.loads(path.read_text(encoding="utf-8")))
                key = (cell.kernel, cell.scenario)
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}: not a pair's result.json ({exc})") from None
            if key not in found or found[key].result.get("started_at", "") <= cell.result.get("started_at", ""):
                found[key] = cell
    return sorted(found.values(), key=lambda c: (c.kernel, c.scenario))


def counts(cells: list[Cell]) -> dict[str, int]:
    out = {status: 0 for status in STATUS_LABELS}
    for cell in cells:
        out[cell.status] += 1
    return out


def exit_code(cells: list[Cell]) -> int:
    """1 if any verdict was wrong (fail or xpass), else 3 if any pair errored, else 0."""
    c = counts(cells)
    if c[FAIL] or c[XPASS]:
        return EXIT_FAILED
    return EXIT_INFRA if c[ERROR] else EXIT_PASSED


# ---------------------------------------------------------------- JUnit

def junit_xml(cells: list[Cell], out_dir: Path) -> ET.ElementTree:
    """A testsuite per kernel, a testcase per pair (classname = kernel).

    xfail is reported as <skipped type="pytest.xfail">, as pytest does, and a pair that
    does not apply as <skipped type="not-applicable">; an error is <error>, never
    <failure>; the serial log is attached by path, and a failing pair's message ends
    with the commands that reproduce it."""
    c = counts(cells)
    root = ET.Element("testsuites", name="kexec-lab", tests=str(len(cells)),
                      failures=str(c[FAIL] + c[XPASS]), errors=str(c[ERROR]),
                      skipped=str(c[XFAIL] + c[SKIP]), time=f"{sum(x.seconds for x in cells):.3f}")
    for kernel in sorted({cell.kernel for cell in cells}):
        mine = [cell for cell in cells if cell.kernel == kernel]
        k = counts(mine)
        suite = ET.SubElement(root, "testsuite", name=kernel, tests=str(len(mine)),
                              failures=str(k[FAIL] + k[XPASS]), errors=str(k[ERROR]),
                              skipped=str(k[XFAIL] + k[SKIP]), time=f"{sum(x.seconds for x in mine):.3f}")
        for cell in mine:
            _testcase(suite, cell, out_dir)
    ET.indent(root)
    return ET.ElementTree(root)


def _testcase(suite: ET.Element, cell: Cell, out_dir: Path) -> None:
    case = ET.SubElement(suite, "testcase", classname=cell.kernel, name=cell.scenario,
                         time=f"{cell.seconds:.3f}")
    props = ET.SubElement(case, "properties")
    for name, value in (("outcome", cell.result.get("outcome")),
                        ("expected", cell.result.get("expected")),
                        ("accelerator", (cell.result.get("accelerator") or {}).get("name")),
                        ("attempts", str(len(cell.matrix.get("retries", [])) + 1)),
                        ("artifacts", str(cell.directory))):
        ET.SubElement(props, "property", name=name, value=str(value))
    summary = evidence_summary(cell.result)
    status = cell.status
    steps = cell.repro(out_dir)
    how = ("\n" + "\n".join(steps.lines())) if steps else ""
    if status == FAIL:
        ET.SubElement(case, "failure", type="verdict-mismatch", message=summary + how).text = summary + how
    elif status == XPASS:
        message = f"unexpectedly passed (expect_fail: {cell.matrix.get('expect_fail')}): {summary}"
        ET.SubElement(case, "failure", type="unexpected-pass", message=message + how).text = message + how
    elif status == ERROR:
        ET.SubElement(case, "error", type=str(cell.result.get("outcome")),
                      message=str(cell.result.get("reason")) + how).text = summary + how
    elif status == XFAIL:
        ET.SubElement(case, "skipped", type="pytest.xfail",
                      message=f"expected failure: {cell.matrix.get('expect_fail')}").text = summary
    elif status == SKIP:
        ET.SubElement(case, "skipped", type="not-applicable",
                      message=str(cell.result.get("reason"))).text = summary
    lines = [summary] + [f"retried after: {r.get('outcome')}: {r.get('reason')}"
                         for r in cell.matrix.get("retries", [])]
    for name in ("serial.log", "result.json"):
        if link := cell.link(name, out_dir):
            lines.append(f"[[ATTACHMENT|{link}]]")
    ET.SubElement(case, "system-out").text = "\n".join(lines)


# ---------------------------------------------------------------- summary.md

def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def summary_md(cells: list[Cell], out_dir: Path) -> str:
    """Kernels as columns, scenarios as rows, verdict and time in each cell."""
    kernels = sorted({c.kernel for c in cells})
    scenarios = sorted({c.scenario for c in cells})
    grid = {(c.kernel, c.scenario): c for c in cells}
    c = counts(cells)
    lines = ["# kexec-lab matrix", "",
             f"{len(cells)} pairs: " + ", ".join(f"{c[s]} {s}" for s in STATUS_LABELS), "",
             *per_kernel_md(cells, kernels), "",
             "| scenario | " + " | ".join(kernels) + " |",
             "|---" * (len(kernels) + 1) + "|"]
    for scenario in scenarios:
        row = [_md(scenario)]
        for kernel in kernels:
            cell = grid.get((kernel, scenario))
            row.append(_md_cell(cell, out_dir) if cell else "—")
        lines.append("| " + " | ".join(row) + " |")
    notes = [cell for cell in cells if cell.status != PASS or cell.matrix.get("retries")]
    if notes:
        lines += ["", "## Not plain passes", ""]
        for cell in notes:
            lines.append(f"- **{cell.kernel} x {cell.scenario}**: {STATUS_LABELS[cell.status]}: "
                         f"{_md(evidence_summary(cell.result))}")
            if cell.status == XFAIL:
                lines.append(f"  - expected failure: {_md(cell.matrix.get('expect_fail'))}")
            if steps := cell.repro(out_dir):
                lines += [f"  - reproduce: `{steps.run}`",
                          f"  - inspect before the trigger: `{steps.console}`"]
                if steps.serial:
                    lines.append(f"  - [serial.log]({steps.serial})")
            for retry in cell.matrix.get("retries", []):
                lines.append(f"  - retried once after {retry.get('outcome')}: {_md(retry.get('reason'))}")
    return "\n".join(lines) + "\n"


def per_kernel_md(cells: list[Cell], kernels: list[str]) -> list[str]:
    """Per kernel, a column per status (skipped pairs have their own)."""
    lines = ["| kernel | " + " | ".join(STATUS_LABELS.values()) + " |",
             "|---" * (len(STATUS_LABELS) + 1) + "|"]
    for kernel in kernels:
        k = counts([cell for cell in cells if cell.kernel == kernel])
        lines.append(f"| {_md(kernel)} | " + " | ".join(str(k[s]) for s in STATUS_LABELS) + " |")
    return lines


def _md_cell(cell: Cell, out_dir: Path) -> str:
    if cell.status == SKIP:  # the reason is in the notes below: keep the grid readable
        return f"{STATUS_MARKS[SKIP]} {STATUS_LABELS[SKIP]}"
    label = f"{STATUS_MARKS[cell.status]} {STATUS_LABELS[cell.status]} {cell.result.get('outcome')}"
    if cell.status in (FAIL, XPASS):
        label += f" (expected {cell.result.get('expected')})"
    label += f", {cell.seconds:.1f} s"
    if cell.matrix.get("retries"):
        label += ", retried"
    link = cell.link("serial.log", out_dir)
    return _md(label + (f" ([serial]({link}))" if link else ""))


# ---------------------------------------------------------------- report.html

def report_html(cells: list[Cell], out_dir: Path, title: str = "kexec-lab matrix",
                changes: dict | None = None) -> str:
    """One HTML file, no external resources; each cell links the pair's files.

    changes (report_diff.html_changes) adds the diff against a baseline: its
    sections, a badge on each changed cell with a link to the baseline's serial.log."""
    kernels = sorted({c.kernel for c in cells})
    scenarios = sorted({c.scenario for c in cells})
    grid = {(c.kernel, c.scenario): c for c in cells}
    notes = (changes or {}).get("cells", {})
    rows = [{"scenario": s, "cells": [_html_cell(grid.get((k, s)), out_dir, notes.get((k, s)))
                                      for k in kernels]}
            for s in scenarios]
    return TEMPLATE.render(title=title, kernels=kernels, rows=rows, counts=counts(cells),
                           labels=STATUS_LABELS, total=len(cells), phases=PHASES + ("other",),
                           changes=changes,
                           generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))


def _html_cell(cell: Cell | None, out_dir: Path, change: dict | None = None) -> dict | None:
    if cell is None:
        return None
    return {"status": cell.status, "label": STATUS_LABELS[cell.status], "kernel": cell.kernel,
            "change": change or NO_CHANGE, "scenario": cell.scenario, "outcome": cell.result.get("outcome"),
            "expected": cell.result.get("expected"), "seconds": cell.seconds,
            "summary": evidence_summary(cell.result), "timeline": cell.timeline(),
            "serial": cell.link("serial.log", out_dir), "result": cell.link("result.json", out_dir),
            "expect_fail": cell.matrix.get("expect_fail"), "retries": cell.matrix.get("retries", []),
            "repro": cell.repro(out_dir)}


def write_reports(cells: list[Cell], out_dir: Path, changes: dict | None = None) -> dict[str, Path]:
    """Write junit.xml, summary.md and report.html (with changes, see report_html) into
    out_dir; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: out_dir / name for kind, name in REPORT_FILES.items()}
    junit_xml(cells, out_dir).write(paths["junit"], encoding="utf-8", xml_declaration=True)
    paths["summary"].write_text(summary_md(cells, out_dir), encoding="utf-8")
    paths["html"].write_text(report_html(cells, out_dir, changes=changes), encoding="utf-8")
    return paths
