"""What a bisection step means to git, and the report a bisection leaves (bisect.md, .json).

A step's runs (one pair each, `--runs N` of them) become git's exit code: every run
passed 0 (good); any run failed its expectation 1 (bad: one failure is enough, so a
flaky bad step still counts); no verdict at all 125 (skip: the build failed, a patch
did not apply, the kernel cannot answer the scenario, or the lab failed twice).
The two ends are checked first; an end that does not behave as claimed means the
bisection cannot be trusted, and it stops there.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labctl.errors import EXIT_FAILED, EXIT_INFRA, EXIT_PASSED, ConfigError, InfraError

GOOD, BAD, SKIP = 0, 1, 125
VERDICTS = {GOOD: "good", BAD: "bad", SKIP: "skip"}
FORMAT = 1  # bisect.json's layout


def short(rev: str) -> str:
    """A commit id as its first 12 digits; a Debian version as it is."""
    return rev[:12] if re.fullmatch(r"[0-9a-f]{40}", rev) else rev


@dataclass
class Run:
    """One pair run of a step: its outcome, whether it met the expectation, where it is."""

    outcome: str
    exit_code: int  # the pair's own: 0 passed, 1 failed, 2 configuration, 3 infrastructure
    reason: str
    artifacts: str
    seconds: float
    retry_of: str = ""  # the infrastructure error this run retried: its artifacts and reason


@dataclass
class Step:
    """One revision tested: an end, a bisection step or the revert check."""

    role: str  # "good end", "bad end", "step", "revert check"
    rev: str  # a commit id, or a Debian version
    label: str  # the commit's subject, or the package name
    code: int = SKIP
    reason: str = ""
    build_seconds: float | None = None
    run_seconds: float = 0.0
    build_log: str | None = None
    runs: list[Run] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return VERDICTS[self.code]

    def to_json(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}

    @classmethod
    def from_json(cls, data: dict) -> Step:
        data = {k: v for k, v in data.items() if k != "verdict"}
        return cls(**{**data, "runs": [Run(**r) for r in data.get("runs", [])]})


def classify(runs: list[Run]) -> tuple[int, str]:
    """git's code for a step and why.  A failed expectation outranks everything (bad);
    all runs passed is good; anything else (no verdict) is a skip."""
    failed = [r for r in runs if r.exit_code == EXIT_FAILED]
    if failed:
        return BAD, (f"{len(failed)} of {len(runs)} run(s) failed: {failed[0].outcome}: "
                     f"{failed[0].reason}")
    if runs and all(r.exit_code == EXIT_PASSED for r in runs):
        return GOOD, f"{len(runs)} of {len(runs)} run(s) passed: {runs[-1].outcome}"
    last = runs[-1] if runs else None
    return SKIP, (f"no verdict: {last.outcome}: {last.reason}" if last else "no run")


def needs_retry(run: Run) -> bool:
    """An infrastructure error is the lab's, not the kernel's: worth one more try."""
    return run.exit_code == EXIT_INFRA


class Untrusted(ConfigError):
    """An end of the range does not behave as claimed: the bisection would mean nothing
    (exit 2: the ends are the user's choice)."""


class EndUntested(InfraError):
    """An end could not be tested because the lab failed (exit 3)."""


def check_end(end: Step, scenario: str) -> None:
    """Raise Untrusted unless this end behaves: the good end passes, the bad end fails.
    Called as soon as an end has its verdict, so a bad end that passes costs no more."""
    if end.role == "good end" and end.code == BAD:
        raise Untrusted(f"the good end {short(end.rev)} fails {scenario} too ({end.reason}): "
                        "the bisection cannot be trusted; pick an older --good that passes")
    if end.role == "bad end" and end.code == GOOD:
        raise Untrusted(f"the bad end {short(end.rev)} passes {scenario} ({end.reason}): there is "
                        "nothing to bisect; if it fails only sometimes, try --runs 3 or more")
    if end.code == SKIP:
        infra = any(r.exit_code == EXIT_INFRA for r in end.runs)
        raise (EndUntested if infra else Untrusted)(
            f"the {end.role} {short(end.rev)} could not be tested ({end.reason}); the bisection "
            "needs both ends' verdicts: fix that or pick another revision")


def estimate_steps(candidates: int) -> int:
    """Steps a bisection of `candidates` revisions (the bad end's ancestors after the
    good end, the bad end included) needs: log2, as git estimates it."""
    return max(0, math.ceil(math.log2(candidates))) if candidates > 1 else 0


def progress_line(step: int, rev: str, label: str, left: int | None, to_go: int | None,
                  phase: str) -> str:
    """The live line: which step, what it tests, how much range is left, steps to go."""
    rng = f"{left} revision(s) left" if left is not None else "range unknown"
    est = f"~{to_go} step(s) to go" if to_go is not None else ""
    return f"bisect step {step}: {phase} {short(rev)} {label[:50]!r}; {rng}{', ' + est if est else ''}"


# ------------------------------------------------------------------ the report

def result_exit_code(report: dict) -> int:
    """0 a first bad revision was named, 1 only a set of candidates (skips in the way)."""
    return EXIT_PASSED if report.get("first_bad") else EXIT_FAILED


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"


def _cell(text: str) -> str:
    """Text from a commit or a log inside a table cell (a '|' would end the cell)."""
    return text.replace("|", "\\|")


def _link(path: str, base: Path) -> str:
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return path


def render_markdown(report: dict, base: Path) -> str:
    """bisect.md: the answer first, then the ends, every step, the revert check, git's log."""
    out = [f"# Bisection of {report['scenario']}: {report['state']}", ""]
    src = report["source"]
    out.append(f"- {src['kind']}: `{src['where']}`; good `{report['good']}`, bad `{report['bad']}`"
               + (f"; recipe {report['recipe']}" if report.get("recipe") else ""))
    out.append(f"- runs per step: {report['runs']} (any failure makes a step bad)")
    out.append(f"- whole bisection: {_seconds(report.get('seconds'))}")
    out.append("")
    first = report.get("first_bad")
    if first:
        out += ["## First bad " + ("commit" if src["kind"] == "tree" else "version"), "",
                f"`{first['sha']}` {first['subject']}", ""]
        if first.get("author"):
            out += [f"- author: {first['author']}", f"- date: {first['date']}",
                    "- files: " + ", ".join(f"`{f}`" for f in first["files"]), ""]
    elif report.get("candidates"):
        out += ["## No single first bad commit", "",
                "Only skipped revisions are left; the first bad one is one of:", ""]
        out += [f"- `{c}`" for c in report["candidates"]] + [""]
    if report.get("message"):
        out += [f"**{report['message']}**", ""]
    steps = [Step.from_json(s) for s in report["steps"]]
    out += ["## Steps", "", "| # | role | revision | subject | verdict | build | run | artifacts | why |",
            "|---|---|---|---|---|---|---|---|---|"]
    for number, step in enumerate(steps, 1):
        links = " ".join(f"[{i}]({_link(r.artifacts, base)})" for i, r in enumerate(step.runs, 1))
        why = step.reason.partition("\n")[0][:160]
        out.append(f"| {number} | {step.role} | `{short(step.rev)}` | {_cell(step.label)} | {step.verdict} | "
                   f"{_seconds(step.build_seconds)} | {_seconds(step.run_seconds)} | {links or '-'} | "
                   f"{_cell(why)} |")
    out.append("")
    revert = report.get("revert")
    if revert:
        out += ["## Revert check", "", revert["summary"], ""]
    if report.get("log"):
        out += ["## Bisect log", "", "```", report["log"].rstrip(), "```", ""]
    return "\n".join(out)
