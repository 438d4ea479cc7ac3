"""What changed between two matrix runs: `labctl report diff BASE NEW`, `--baseline`.

People read a nightly for its difference from the last good night, not for the
48 green cells.  diff_runs() compares two sets of loaded pairs (report.Cell) and
returns every kind of change, in the order diff.md lists them: verdict changes,
kernel package versions, slower phases, pairs that needed a retry, pairs found
in only one run.  Everything here is a pure function of the results on disk, so
a diff can be redone later from two artifact directories.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from labctl.errors import EXIT_FAILED, EXIT_PASSED, ConfigError
from labctl.report.render import ERROR, FAIL, PHASES, SKIP, STATUS_LABELS, XPASS, Cell, load_cells, write_reports

REGRESSED, SKIPPED, FIXED, CHANGED, INFRA = "regressed", "skipped", "fixed", "changed", "infra"
KIND_ORDER = (REGRESSED, SKIPPED, FIXED, CHANGED, INFRA)
KIND_LABELS = {REGRESSED: "REGRESSED", SKIPPED: "SKIP", FIXED: "FIXED", CHANGED: "CHANGED", INFRA: "INFRA"}
FAILING = {FAIL, XPASS}
TIMED = PHASES + ("total",)
SLOWER_RATIO = 1.5     # a phase must be more than 50 % slower ...
SLOWER_SECONDS = 1.0   # ... and more than 1 s slower: TCG jitter on short phases is not news
DIFF_FILE = "diff.md"
Key = tuple[str, str]


@dataclass(frozen=True)
class Run:
    """One side of a diff: its pairs and a label for people (the run id)."""

    label: str
    cells: list[Cell]

    @property
    def by_key(self) -> dict[Key, Cell]:
        return {(c.kernel, c.scenario): c for c in self.cells}


@dataclass(frozen=True)
class VerdictChange:
    kind: str
    base: Cell
    new: Cell


@dataclass(frozen=True)
class KernelChange:
    kernel: str
    base: tuple[str, ...]
    new: tuple[str, ...]


@dataclass(frozen=True)
class Slower:
    base: Cell
    new: Cell
    phases: tuple[tuple[str, float, float], ...]  # (phase, baseline s, now s)


@dataclass(frozen=True)
class Retried:
    side: str  # "baseline" or "now"
    cell: Cell


@dataclass
class RunDiff:
    base: Run
    new: Run
    verdicts: list[VerdictChange] = field(default_factory=list)
    kernels: list[KernelChange] = field(default_factory=list)
    slower: list[Slower] = field(default_factory=list)
    retried: list[Retried] = field(default_factory=list)
    only_base: list[Cell] = field(default_factory=list)
    only_new: list[Cell] = field(default_factory=list)

    @property
    def regressed(self) -> list[VerdictChange]:
        return [v for v in self.verdicts if v.kind == REGRESSED]

    @property
    def exit_code(self) -> int:
        """1 when a verdict regressed (a CI job fails on it), else 0."""
        return EXIT_FAILED if self.regressed else EXIT_PASSED

    def headline(self) -> str:
        """The counts that are not zero, e.g. '1 regressed, 2 slower, 1 new pair'."""
        kinds = {k: sum(v.kind == k for v in self.verdicts) for k in KIND_ORDER}
        parts = [(kinds[REGRESSED], "regressed"), (kinds[SKIPPED], "to or from skipped"),
                 (kinds[FIXED], "fixed"),
                 (kinds[CHANGED], "changed outcome"), (kinds[INFRA], "to or from an infra error"),
                 (len(self.kernels), "kernel version change(s)"), (len(self.slower), "slower"),
                 (len(self.retried), "passed only on retry"), (len(self.only_new), "new pair(s)"),
                 (len(self.only_base), "removed pair(s)")]
        return ", ".join(f"{n} {text}" for n, text in parts if n) or "no change"


# ---------------------------------------------------------------- comparing

def verdict_change(base: Cell, new: Cell) -> str | None:
    """How a pair's verdict moved, or None if status and outcome are the same.

    A failure that was not failing before is a regression (also after an infra
    error: the last verdict seen was not a failure); to or from an error without
    a failure on either side is infra; to or from a skip (the scenario stopped or
    started applying to the kernel) is listed as such, never as a fix: a failure that
    became a skip is not fixed; any other move, e.g. the same PASS with a different
    outcome under a changed expectation, is a change."""
    before, after = base.status, new.status
    if before == after and base.result.get("outcome") == new.result.get("outcome"):
        return None
    if after in FAILING and before not in FAILING:
        return REGRESSED
    if SKIP in (before, after):
        return SKIPPED
    if before in FAILING and after not in FAILING | {ERROR}:
        return FIXED
    if ERROR in (before, after):
        return INFRA
    return CHANGED


def kernel_version(cell: Cell) -> str | None:
    """What was booted: the Debian package and version, else the release (recipe
    kernels carry their build key in it); None when the run never got that far."""
    kernel = cell.result.get("kernel") or {}
    if kernel.get("package") and kernel.get("version"):
        return f"{kernel['package']} {kernel['version']}"
    return kernel.get("release")


def kernel_changes(base: list[Cell], new: list[Cell]) -> list[KernelChange]:
    """Per catalogue kernel present in both runs, the versions booted if they differ."""
    def versions(cells: list[Cell]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for cell in cells:
            if (version := kernel_version(cell)) is not None:
                out.setdefault(cell.kernel, set()).add(version)
        return out
    before, after = versions(base), versions(new)
    return [KernelChange(k, tuple(sorted(before[k])), tuple(sorted(after[k])))
            for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]


def slower_phases(base: Cell, new: Cell) -> tuple[tuple[str, float, float], ...]:
    """Phases more than 50 % and more than 1 s slower than in the baseline."""
    then, now = base.result.get("timings") or {}, new.result.get("timings") or {}
    found = []
    for phase in TIMED:
        b, n = then.get(phase), now.get(phase)
        if isinstance(b, int | float) and isinstance(n, int | float) \
                and n - b > SLOWER_SECONDS and n > b * SLOWER_RATIO:
            found.append((phase, float(b), float(n)))
    return tuple(found)


def passed_on_retry(cell: Cell) -> bool:
    """A verdict reached only by the retry after an infrastructure error."""
    return bool(cell.matrix.get("retries")) and cell.status != ERROR


def diff_runs(base: Run, new: Run) -> RunDiff:
    """Every change from base to new.  Time is compared only between runs that
    reached the same outcome: another outcome takes another path through the steps."""
    diff = RunDiff(base, new)
    old, cur = base.by_key, new.by_key
    for key in sorted(old.keys() & cur.keys()):
        b, n = old[key], cur[key]
        if kind := verdict_change(b, n):
            diff.verdicts.append(VerdictChange(kind, b, n))
        elif ERROR not in (b.status, n.status) and (phases := slower_phases(b, n)):
            diff.slower.append(Slower(b, n, phases))
    diff.verdicts.sort(key=lambda v: KIND_ORDER.index(v.kind))  # stable: by pair within a kind
    diff.kernels = kernel_changes(base.cells, new.cells)
    diff.retried = [Retried(side, c) for side, run in (("baseline", base), ("now", new))
                    for c in run.cells if passed_on_retry(c)]
    diff.only_base = [old[k] for k in sorted(old.keys() - cur.keys())]
    diff.only_new = [cur[k] for k in sorted(cur.keys() - old.keys())]
    return diff


# ---------------------------------------------------------------- loading

def load_run(path: Path) -> Run:
    """A run directory (or its matrix.json), a merged CI artifact with shard
    directories under it, or anything else holding pairs' result.json files."""
    path = Path(path)
    directory = path.parent if path.is_file() and path.name == "matrix.json" else path
    if not directory.is_dir():
        raise ConfigError(f"{path}: not a run directory or matrix.json")
    cells = load_cells([directory])
    if not cells:
        raise ConfigError(f"{path}: no result.json under it; is it a matrix run directory?")
    return Run(run_label(directory, cells), cells)


def run_label(directory: Path, cells: list[Cell]) -> str:
    """The run id when there is one (matrix.json, or every pair's); for merged CI shards
    (a run id each) the directory name and when the first pair started."""
    plan = directory / "matrix.json"
    if plan.is_file():
        try:
            return str(json.loads(plan.read_text(encoding="utf-8"))["run_id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError(f"{plan}: not a matrix.json (no run_id)") from None
    run_ids = {c.matrix.get("run_id") or c.result.get("run_id") for c in cells}
    if len(run_ids) == 1 and None not in run_ids:
        return str(run_ids.pop())
    started = min((str(c.result.get("started_at")) for c in cells if c.result.get("started_at")),
                  default="?")
    return f"{directory.resolve().name} ({len(run_ids)} runs, first started {started})"


# ---------------------------------------------------------------- rendering

@dataclass(frozen=True)
class Entry:
    """One line of a section: the pair, what changed, and links to both runs' files."""

    pair: str
    text: str
    links: tuple[tuple[str, str], ...] = ()
    details: tuple[str, ...] = ()


def _verdict(cell: Cell) -> str:
    text = f"{STATUS_LABELS[cell.status]} {cell.result.get('outcome')}"
    if cell.result.get("expected") not in (None, cell.result.get("outcome")):
        text += f" (expected {cell.result.get('expected')})"
    return text


def _pair(cell: Cell) -> str:
    return f"{cell.kernel} x {cell.scenario}"


def _links(out_dir: Path, *sides: tuple[str, Cell]) -> tuple[tuple[str, str], ...]:
    found = []
    for label, cell in sides:
        if link := cell.link("serial.log", out_dir):
            found.append((label, link))
    return tuple(found)


def sections(diff: RunDiff, out_dir: Path) -> list[tuple[str, list[Entry]]]:
    """The non-empty sections, in the order people should read them."""
    out: list[tuple[str, list[Entry]]] = []
    verdicts = [Entry(_pair(v.new), f"{KIND_LABELS[v.kind]}: {_verdict(v.base)} -> {_verdict(v.new)}",
                      _links(out_dir, ("serial.log", v.new), ("baseline serial.log", v.base)),
                      (f"now: {v.new.result.get('reason')}",))
                for v in diff.verdicts]
    kernels = [Entry(k.kernel, f"{', '.join(k.base)} -> {', '.join(k.new)}") for k in diff.kernels]
    slower = [Entry(_pair(s.new), ", ".join(f"{p} {b:.2f} -> {n:.2f} s (+{100 * (n - b) / b:.0f} %)"
                                            if b else f"{p} {b:.2f} -> {n:.2f} s"
                                            for p, b, n in s.phases),
                    _links(out_dir, ("serial.log", s.new), ("baseline serial.log", s.base)))
              for s in diff.slower]
    retried = [Entry(_pair(r.cell), f"{STATUS_LABELS[r.cell.status]} only on retry ({r.side})",
                     _links(out_dir, ("serial.log", r.cell)),
                     tuple(f"first attempt: {a.get('outcome')}: {a.get('reason')}"
                           for a in r.cell.matrix.get("retries", [])))
               for r in diff.retried]
    only = [Entry(_pair(c), f"new pair: {_verdict(c)}", _links(out_dir, ("serial.log", c)))
            for c in diff.only_new]
    only += [Entry(_pair(c), f"removed (baseline: {_verdict(c)})") for c in diff.only_base]
    for title, entries in (("Verdict changes", verdicts), ("Kernel versions", kernels),
                           ("Slower (a phase > 50 % and > 1 s slower)", slower),
                           ("Passed only on retry", retried), ("In one run only", only)):
        if entries:
            out.append((title, entries))
    return out


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def diff_md(diff: RunDiff, out_dir: Path) -> str:
    """diff.md: the headline, then each non-empty section, regressions first."""
    lines = [f"# What changed: {_md(diff.base.label)} -> {_md(diff.new.label)}", "",
             f"{len(diff.new.cells)} pairs now, {len(diff.base.cells)} in the baseline: "
             + diff.headline() + ".", ""]
    found = sections(diff, out_dir)
    if not found:
        lines.append("Nothing changed.")
    for title, entries in found:
        lines += [f"## {title}", ""]
        for entry in entries:
            links = " ".join(f"([{label}]({href}))" for label, href in entry.links)
            lines.append(f"- **{_md(entry.pair)}**: {_md(entry.text)}" + (f" {links}" if links else ""))
            lines += [f"  - {_md(detail)}" for detail in entry.details]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def html_changes(diff: RunDiff, out_dir: Path) -> dict:
    """What report.html shows of the diff: per-cell badges and baseline links, per-kernel
    version notes, and the same sections as diff.md."""
    cells: dict[Key, dict] = {}

    def note(cell: Cell) -> dict:
        return cells.setdefault((cell.kernel, cell.scenario),
                                {"badges": [], "baseline": {"serial": None, "result": None}})

    for v in diff.verdicts:
        entry = note(v.new)
        entry["badges"].append({"kind": v.kind, "text": f"{v.kind}: was {_verdict(v.base)}"})
        entry["baseline"] = {"serial": v.base.link("serial.log", out_dir),
                             "result": v.base.link("result.json", out_dir)}
    for s in diff.slower:
        entry = note(s.new)
        entry["badges"].append({"kind": "slower", "text": "slower: " + ", ".join(
            f"{p} {b:.1f} -> {n:.1f} s" for p, b, n in s.phases)})
        entry["baseline"] = {"serial": s.base.link("serial.log", out_dir),
                             "result": s.base.link("result.json", out_dir)}
    for c in diff.only_new:
        note(c)["badges"].append({"kind": "new", "text": "new pair"})
    return {"base": diff.base.label, "new": diff.new.label, "headline": diff.headline(),
            "cells": cells, "sections": sections(diff, out_dir),
            "kernels": {k.kernel: f"{', '.join(k.base)} -> {', '.join(k.new)}" for k in diff.kernels}}


def write_with_baseline(cells: list[Cell], out_dir: Path, base: Run,
                        label: str | None = None) -> tuple[RunDiff, dict[str, Path]]:
    """The usual reports of `cells`, with the diff against base in report.html, plus diff.md."""
    new = Run(label or run_label(out_dir, cells), cells)
    diff = diff_runs(base, new)
    paths = write_reports(cells, out_dir, changes=html_changes(diff, out_dir))
    paths["diff"] = out_dir / DIFF_FILE
    paths["diff"].write_text(diff_md(diff, out_dir), encoding="utf-8")
    return diff, paths


# ---------------------------------------------------------------- labctl report diff

def cmd_diff(args: argparse.Namespace) -> int:
    base, new = load_run(Path(args.base)), load_run(Path(args.new))
    out = Path(args.out).resolve()
    diff, paths = write_with_baseline(new.cells, out, base, label=new.label)
    print(f"{base.label} -> {new.label}: {diff.headline()}")
    for v in diff.regressed:
        print(f"  REGRESSED {_pair(v.new)}: {_verdict(v.base)} -> {_verdict(v.new)}")
    for path in (paths["diff"], paths["html"]):
        print(f"  {path}")
    return diff.exit_code


def register(rsub) -> None:
    """`labctl report diff` (called by report_cli.register)."""
    diff = rsub.add_parser("diff", help="what changed between two matrix runs: diff.md and "
                                        "report.html with badges; exit 1 if a verdict regressed")
    diff.add_argument("base", help="baseline run directory or its matrix.json (e.g. last night)")
    diff.add_argument("new", help="new run directory or its matrix.json")
    diff.add_argument("--out", default="report", help="output directory (default: ./report)")
    diff.set_defaults(func=cmd_diff)
