"""`labctl report`: merge (report/render.py's reports over many result directories), diff
(report/diff.py) and history (report/history.py), registered here so that those
modules import report/render.py and nothing imports back."""

from __future__ import annotations

import argparse
from pathlib import Path

from labctl.errors import ConfigError
from labctl.report import diff as report_diff
from labctl.report import history
from labctl.report.diff import load_run, run_label, write_with_baseline
from labctl.report.render import STATUS_LABELS, counts, exit_code, load_cells, write_reports


def cmd_merge(args: argparse.Namespace) -> int:
    base = load_run(Path(args.baseline)) if args.baseline else None
    cells = load_cells([Path(d) for d in args.dirs])
    if not cells:
        raise ConfigError(f"no result.json under {', '.join(args.dirs)}")
    out = Path(args.out).resolve()
    label = run_label(Path(args.dirs[0]), cells) if len(args.dirs) == 1 else " + ".join(args.dirs)
    diff, paths = write_with_baseline(cells, out, base, label) if base else (None, write_reports(cells, out))
    c = counts(cells)
    print(f"{len(cells)} pairs: " + ", ".join(f"{c[s]} {s}" for s in STATUS_LABELS))
    if base and diff:
        print(f"since {base.label}: {diff.headline()}")
    for path in paths.values():
        print(f"  {path}")
    return exit_code(cells)


def register(subparsers) -> None:
    report = subparsers.add_parser("report", help="reports over many pairs' results")
    rsub = report.add_subparsers(dest="report_command", required=True)
    merge = rsub.add_parser("merge", help="merge result directories (e.g. CI shards) into one "
                                          "junit.xml, summary.md and report.html")
    merge.add_argument("dirs", nargs="+", help="directories searched for result.json files")
    merge.add_argument("--out", default="report", help="output directory (default: ./report)")
    merge.add_argument("--baseline", help="an earlier run (directory or matrix.json) to diff "
                                          "against: diff.md and badges in report.html")
    merge.set_defaults(func=cmd_merge)
    report_diff.register(rsub)
    history.register(rsub)
