"""`labctl report history DIR...`: is this red new, or has it been flapping for a week?

Over several nights (run directories, in the order they started), each pair's
verdict sequence, its median time, and a flag when its verdict flips.  One flip
is a change (the night it happened is named); two or more flips are flaky.  An
infra error and a skip (the scenario did not apply to that night's kernel) are
shown and counted but are no verdict, so they neither count as a flip nor enter
the median.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from pathlib import Path

from labctl.errors import EXIT_PASSED, ConfigError
from labctl.report.diff import Run, load_run
from labctl.report.render import ERROR, FAIL, PASS, SKIP, XFAIL, XPASS, Cell

LETTERS = {PASS: "P", FAIL: "F", ERROR: "E", XFAIL: "x", XPASS: "X", SKIP: "s"}
NO_VERDICT = (None, ERROR, SKIP)
ABSENT = "."
FLAKY_FLIPS = 2


@dataclass(frozen=True)
class Night:
    path: Path
    run: Run
    started: str  # the earliest started_at of its pairs, for ordering

    @property
    def label(self) -> str:
        return self.run.label


@dataclass(frozen=True)
class PairHistory:
    kernel: str
    scenario: str
    cells: tuple[Cell | None, ...]  # one per night, None where the pair did not run

    @property
    def statuses(self) -> list[str | None]:
        return [c.status if c else None for c in self.cells]

    @property
    def sequence(self) -> str:
        return " ".join(LETTERS[s] if s else ABSENT for s in self.statuses)

    def flip_nights(self) -> list[int]:
        """Indexes of the nights whose verdict differs from the previous verdict seen."""
        flips, last = [], None
        for night, status in enumerate(self.statuses):
            if status in NO_VERDICT:
                continue
            if last is not None and status != last:
                flips.append(night)
            last = status
        return flips

    @property
    def median_seconds(self) -> float | None:
        times = [c.seconds for c in self.cells if c and c.status not in NO_VERDICT]
        return statistics.median(times) if times else None

    @property
    def flaky(self) -> bool:
        return len(self.flip_nights()) >= FLAKY_FLIPS


def load_nights(directories: list[Path]) -> list[Night]:
    """Each directory is one night; ordered by when its first pair started."""
    nights = []
    for directory in directories:
        run = load_run(directory)
        started = min((str(c.result.get("started_at") or "") for c in run.cells), default="")
        nights.append(Night(Path(directory), run, started))
    return sorted(nights, key=lambda n: n.started)


def histories(nights: list[Night]) -> list[PairHistory]:
    keys = sorted({key for night in nights for key in night.run.by_key})
    return [PairHistory(k, s, tuple(night.run.by_key.get((k, s)) for night in nights))
            for k, s in keys]


def note(history: PairHistory) -> str:
    flips = history.flip_nights()
    errors = history.statuses.count(ERROR)
    parts = []
    if len(flips) >= FLAKY_FLIPS:
        parts.append(f"FLAKY: {len(flips)} flips")
    elif flips:
        parts.append(f"changed in night {flips[0] + 1}")
    if errors:
        parts.append(f"{errors} infra error(s)")
    if skips := history.statuses.count(SKIP):
        parts.append(f"{skips} skipped")
    return "; ".join(parts)


def history_table(nights: list[Night]) -> str:
    """The text `labctl report history` prints: a legend, then one row per pair."""
    rows = histories(nights)
    lines = [f"{len(nights)} nights, oldest first:"]
    lines += [f"  {i}. {n.path}: {n.label}" + (f", started {n.started}" if n.started not in n.label else "")
              for i, n in enumerate(nights, 1)]
    flaky = [f"{h.kernel} x {h.scenario}" for h in rows if h.flaky]
    lines.append(f"{len(flaky)} flaky pair(s)" + (": " + ", ".join(flaky) if flaky else ""))
    lines.append("verdicts: P pass, F fail, E infra error, x xfail, X xpass, s skipped, . not run")
    pair_width = max([len("pair")] + [len(h.kernel) + len(h.scenario) + 3 for h in rows])
    seq_width = max(len("verdicts"), 2 * len(nights) - 1)
    lines.append(f"{'pair':<{pair_width}}  {'verdicts':<{seq_width}}  {'median':>8}  note")
    for h in rows:
        median = f"{h.median_seconds:.1f} s" if h.median_seconds is not None else "-"
        lines.append(f"{h.kernel + ' x ' + h.scenario:<{pair_width}}  {h.sequence:<{seq_width}}  "
                     f"{median:>8}  {note(h)}".rstrip())
    return "\n".join(lines) + "\n"


def cmd_history(args: argparse.Namespace) -> int:
    if len(args.dirs) < 2:
        raise ConfigError("labctl report history needs two or more run directories (nights)")
    print(history_table(load_nights([Path(d) for d in args.dirs])), end="")
    return EXIT_PASSED


def register(rsub) -> None:
    """`labctl report history` (called by report_cli.register)."""
    history = rsub.add_parser("history", help="per pair over several nights: verdict sequence, "
                                              "median time, flaky pairs (verdict flips)")
    history.add_argument("dirs", nargs="+", help="run directories (or matrix.json), one per night, "
                                                 "any order")
    history.set_defaults(func=cmd_history)
