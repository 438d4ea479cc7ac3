"""`labctl bisect`: which change broke a kexec promise, with the lab as the test.

Over a git tree (--tree): a private detached worktree under the lab's cache (the
user's checkout, index and branches are never touched), one object directory kept
for the whole bisection so each step rebuilds only what changed, both ends checked
first, then `git bisect good/bad/skip` driven step by step (so the record is git's
own bisect log), and finally a revert check: the first bad commit reverted on the
bad end must pass again.  Over Debian kernel versions (--debian): the same steps on
the packaged kernels the archive has, no builds.
The report is bisect.json and bisect.md in the run's artifacts directory; a
bisection stopped by Ctrl-C (or anything else) resumes from its bisect.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path

from labctl.artifacts import check_writable, new_run_id
from labctl.campaigns import bisect_debian
from labctl.campaigns.bisect_git import Next, Worktree, check_range, check_tree, describe, parse_next, resolve, subject
from labctl.campaigns.bisect_report import (
    BAD,
    FORMAT,
    GOOD,
    SKIP,
    Step,
    Untrusted,
    check_end,
    classify,
    estimate_steps,
    progress_line,
    result_exit_code,
    short,
)
from labctl.campaigns.bisect_steps import Bisection
from labctl.campaigns.matrix import run_id_arg
from labctl.config.options import add_common_opts, lab_from_args, positive_int
from labctl.config.schema import LabConfig, Scenario, find_scenario, load_scenario
from labctl.errors import ConfigError, Interrupted, LabError
from labctl.kernel.build import BuildError, PatchError, Recipe, apply_patch, build_tree, entry_recipe
from labctl.kernel.image import Kernel
from labctl.progress import say

DEFAULT_RECIPE = "tiny-6.12"
EPILOG = """exit codes: 0 the first bad commit (or version) named, 1 only skipped revisions left
(the report lists the candidates), 2 bad input or an end that does not behave (the good end
fails, the bad end passes), 3 infrastructure error, 130 interrupted (--resume goes on)
docs/bisect.md has the details."""
ERROR_LINE = re.compile(r"^.*(?:\berror:|\*\*\* ).*$", re.MULTILINE)


class GitBisection(Bisection):
    """Bisect a git tree with a recipe's config and patches."""

    def __init__(self, lab: LabConfig, scenario: Scenario, runs: int, out: Path, report: dict,
                 recipe: Recipe, jobs: int | None):
        super().__init__(lab, scenario, runs, out, report)
        self.recipe, self.jobs = recipe, jobs
        self.repo = Path(report["source"]["where"])
        work = lab.cache_dir / "bisect" / report["run_id"]
        self.tree = Worktree(self.repo, work / "src")
        self.obj = work / "obj"

    def run(self) -> int:
        good, bad = self.report["good"], self.report["bad"]
        try:
            self.where = f"checking out {bad[:12]} into a private worktree"
            say(f"bisect: {self.where} ({self.tree.path})")
            self.tree.remove()  # what a killed run of this bisection may have left
            self.tree.add(bad)
            nxt = self.start(good, bad)
            while nxt.rev:
                number = sum(1 for s in self.steps if s.role == "step") + 1
                step = self.test(nxt.rev, "step", number, nxt.left, nxt.steps)
                said = self.tree.bisect({GOOD: "good", BAD: "bad", SKIP: "skip"}[step.code], nxt.rev)
                nxt = parse_next(said, self.tree.head())
            self.report["log"] = self.tree.bisect_log()
            self.finish(nxt, bad)
            return result_exit_code(self.report)
        except Interrupted as exc:
            if self.tree.path.exists():  # keep a resumed report's log until a new one exists
                self.report["log"] = self.tree.bisect_log() or self.report.get("log", "")
            return self.stopped(str(exc))
        except LabError as exc:  # the report says why it stopped (an end, or the lab)
            self.report["message"] = str(exc)
            self.save("aborted" if isinstance(exc, Untrusted) else "failed")
            raise
        finally:
            say(f"bisect: removing the private worktree {self.tree.path}")
            self.tree.remove()
            shutil.rmtree(self.obj.parent, ignore_errors=True)

    def start(self, good: str, bad: str) -> Next:
        """Both ends first (unless a resumed report has them), then `git bisect start`;
        a resumed bisection replays its saved git bisect log."""
        ends = {s.role: s for s in self.steps if s.role.endswith(" end")}
        n = self.report["candidates_total"]
        for role, rev in (("bad end", bad), ("good end", good)):
            if role not in ends:
                ends[role] = self.test(rev, role, 0, n, estimate_steps(n))
            check_end(ends[role], self.scenario.name)
        self.where = "starting git bisect"
        if self.report.get("log"):
            log = self.out / "bisect.log.resumed"
            log.write_text(self.report["log"])
            said = self.tree.bisect("replay", str(log))
        else:
            said = self.tree.bisect("start", bad, good)
        return parse_next(said, self.tree.head())

    def test(self, rev: str, role: str, number: int, left: int | None, to_go: int | None,
             revert_of: str | None = None) -> Step:
        """Build `rev` (with the recipe's patches) incrementally and run the scenario on it."""
        label = subject(self.repo, rev)
        step = Step(role, rev, label)
        index = self.next_index()
        self.where = progress_line(number or index, rev, label, left, to_go, f"{role}: building")
        self.progress.say(self.where)
        if revert_of is None:
            self.tree.checkout(rev)
        kernel, step.build_seconds, step.build_log, why = self.build(rev, index)
        if kernel is None:
            step.code, step.reason = SKIP, why
            return self.record(step)
        self.where = progress_line(number or index, rev, label, left, to_go, f"{role}: running")
        self.progress.say(self.where)
        t0 = time.monotonic()
        step.runs = self.run_kernel(kernel, index)
        step.run_seconds = round(time.monotonic() - t0, 1)
        step.code, step.reason = classify(step.runs)
        return self.record(step)

    def build(self, rev: str, index: int) -> tuple[Kernel | None, float | None, str, str]:
        """(kernel, seconds, build log, why not): a patch that does not apply or a build that
        fails is a skip, with its reason."""
        builds = self.out / "builds"
        builds.mkdir(exist_ok=True)
        log = builds / f"{index:02d}-{rev[:12]}.log"
        t0 = time.monotonic()
        try:
            for patch in self.recipe.patches:
                apply_patch(patch, self.tree.path)
            built = build_tree(self.recipe, self.tree.path, self.obj, self.lab.cache_dir, log,
                               self.progress, self.jobs)
        except PatchError as exc:
            return None, None, str(log), f"patch does not apply: {exc}"
        except (BuildError, ConfigError) as exc:
            return (None, round(time.monotonic() - t0, 1), str(log),
                    f"build failed: {first_error(log, self.tree.path)}\n{exc}")
        keep = builds / f"{index:02d}-{rev[:12]}"
        keep.mkdir()
        for name in ("bzImage", "config") if self.recipe.arch == "x86_64" else ("config",):
            shutil.copy2(built.output(name), keep / name)
        image = keep / "bzImage" if (keep / "bzImage").exists() else built.output("bzImage")
        kernel = Kernel(name=rev[:12], bzimage=image, release=built.release, config=keep / "config",
                        recipe={"bisect": self.recipe.name, "commit": rev, "tree": str(self.repo)},
                        arch=self.recipe.arch, kexec_image=image)
        return kernel, built.seconds, str(log), ""

    def finish(self, nxt: Next, bad: str) -> None:
        """Name the first bad commit and check that reverting it on the bad end passes."""
        if nxt.first_bad:
            self.report["first_bad"] = describe(self.repo, nxt.first_bad).to_json()
            self.revert_check(nxt.first_bad, bad)
        else:
            self.report["candidates"] = list(nxt.candidates)
        self.save("done")
        first = self.report.get("first_bad")
        say(f"bisect: first bad commit {first['sha'][:12]} {first['subject']!r}" if first else
            f"bisect: only skipped commits left; the first bad is one of {len(nxt.candidates)}")
        say(f"bisect: report {self.out / 'bisect.md'} ({self.report['seconds']:.0f} s in all)")

    def revert_check(self, first_bad: str, bad: str) -> None:
        self.where = f"checking the revert of {first_bad[:12]} on {bad[:12]}"
        self.tree.bisect("reset", bad)
        self.tree.checkout(bad)
        conflict = self.tree.revert(first_bad)
        if conflict:
            self.report["revert"] = {"applies": False, "passed": None,
                                     "summary": f"The revert of `{first_bad[:12]}` does not apply on "
                                                f"the bad end `{bad[:12]}`: {conflict}"}
            return
        step = self.test(bad, "revert check", 0, 0, 0, revert_of=first_bad)
        step.label = f"{step.label} (with {first_bad[:12]} reverted)"
        passed = step.code == GOOD
        self.report["revert"] = {
            "applies": True, "passed": passed, "verdict": step.verdict,
            "summary": (f"With `{first_bad[:12]}` reverted on the bad end `{bad[:12]}`, "
                        f"{self.scenario.name} is {step.verdict} again ({step.reason})."
                        + ("" if passed else " The revert alone does not restore the promise: "
                           "another commit in the range is involved, or the step had no verdict."))}


# ------------------------------------------------------------------ the command

def register(sub) -> None:
    parser = sub.add_parser("bisect", help="find the commit (or Debian version) that broke a "
                                           "scenario: git bisect with the lab as the test",
                            description=__doc__, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", help="scenario name or path (not with --resume)")
    parser.add_argument("--tree", type=Path, help="a kernel git checkout or repository (never written: "
                                                  "the bisection uses a private worktree)")
    parser.add_argument("--debian", metavar="PACKAGE", help="bisect the versions of a Debian kernel "
                        "package (e.g. linux-image-6.12-cloud-amd64) instead of a tree")
    parser.add_argument("--good", help="a revision (or version) that passes the scenario")
    parser.add_argument("--bad", help="a revision (or version) that fails it")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE,
                        help=f"catalogue recipe whose config and patches each step uses (default {DEFAULT_RECIPE})")
    parser.add_argument("--kernel-config", type=Path, action="append", default=[], metavar="FRAGMENT",
                        help="a config fragment merged after the recipe's own (repeatable), e.g. an "
                             "option the regression needs")
    parser.add_argument("--runs", type=positive_int, default=1,
                        help="runs per step (default 1); any failure makes the step bad")
    parser.add_argument("-j", "--jobs", type=positive_int, help="make jobs (default: all cores)")
    parser.add_argument("--resume", type=Path, metavar="BISECT_JSON",
                        help="go on with a stopped bisection from its bisect.json (or its directory)")
    add_common_opts(parser)
    parser.add_argument("--run-id", type=run_id_arg, help="run directory name (default: time + random)")
    parser.set_defaults(func=cmd_bisect)


def cmd_bisect(args: argparse.Namespace) -> int:
    lab = lab_from_args(args)
    report = resume_report(args.resume) if args.resume else new_report(lab, args)
    scenario = load_scenario(find_scenario(report["scenario"], lab.scenarios_dir))
    out = report.pop("_dir", None) or lab.artifacts_dir / report["run_id"]
    if not args.resume:
        check_writable(lab.artifacts_dir)
        try:
            out.mkdir(parents=True, mode=0o700, exist_ok=False)
        except FileExistsError:
            raise ConfigError(f"{out} already exists and results are never overwritten: use "
                              "another --run-id, or --resume its bisect.json") from None
    say(f"bisect {report['run_id']}: {scenario.name} over {report['source']['kind']} "
        f"{report['source']['where']}, good {short(report['good'])}, bad {short(report['bad'])} "
        f"({report['candidates_total']} candidate(s), ~{estimate_steps(report['candidates_total'])} "
        f"step(s) after both ends); report in {out}")
    if report["source"]["kind"] == "debian":
        return bisect_debian.DebianBisection(lab, scenario, report["runs"], out, report).run()
    return GitBisection(lab, scenario, report["runs"], out, report,
                        recipe_for(lab, report["recipe"], report.get("kernel_config")), args.jobs).run()


def first_error(log: Path, tree: Path) -> str:
    """The compiler's (or make's) first error line in a build log, paths relative to the tree."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "no build log"
    found = ERROR_LINE.search(text)
    return found[0].strip().replace(f"{tree}/", "") if found else "see the build log"


def recipe_for(lab: LabConfig, name: str, fragments: list[str] | None = None) -> Recipe:
    """The recipe a bisection builds every step with, plus --kernel-config fragments."""
    entry = lab.kernels.get(name)
    if entry is None or not entry.recipe:
        recipes = sorted(n for n, e in lab.kernels.items() if e.recipe)
        raise ConfigError(f"--recipe {name}: not a recipe kernel in {lab.path} (recipes: "
                          f"{', '.join(recipes) or 'none'})")
    recipe = entry_recipe(lab, entry)
    extra = tuple(Path(f) for f in fragments or [])
    if missing := [str(f) for f in extra if not f.is_file()]:
        raise ConfigError(f"--kernel-config {', '.join(missing)}: no such file; give a config "
                          "fragment (lines like CONFIG_X=y)")
    return replace(recipe, fragments=(*recipe.fragments, *extra))


def new_report(lab: LabConfig, args: argparse.Namespace) -> dict:
    """Check the command line (exit 2 with what to do) and start the report."""
    if not args.scenario:
        raise ConfigError("name the scenario to bisect with (e.g. `labctl bisect crash-corrupt "
                          "--tree PATH --good REV --bad REV`), or give --resume BISECT_JSON")
    if bool(args.tree) == bool(args.debian):
        raise ConfigError("give exactly one of --tree PATH (a kernel git tree) or --debian PACKAGE")
    if not args.good or not args.bad:
        raise ConfigError("give both --good (passes the scenario) and --bad (fails it)")
    load_scenario(find_scenario(args.scenario, lab.scenarios_dir))  # a bad name: exit 2 now
    base = {"format": FORMAT, "run_id": args.run_id or new_run_id(), "scenario": args.scenario,
            "runs": args.runs, "state": "running", "steps": [], "seconds": 0.0}
    if args.debian:
        versions = bisect_debian.versions_between(args.debian, args.good, args.bad)
        return {**base, "source": {"kind": "debian", "where": args.debian},
                "good": versions[0].version, "bad": versions[-1].version,
                "versions": [v.to_json() for v in versions], "candidates_total": len(versions) - 1}
    fragments = [str(f.resolve()) for f in args.kernel_config]
    recipe_for(lab, args.recipe, fragments)
    repo = check_tree(args.tree)
    good, bad = resolve(repo, args.good, "--good"), resolve(repo, args.bad, "--bad")
    total = check_range(repo, good, bad)
    return {**base, "source": {"kind": "tree", "where": str(repo)}, "recipe": args.recipe,
            "kernel_config": fragments, "good": good, "bad": bad, "candidates_total": total}


def resume_report(path: Path) -> dict:
    """A stopped bisection's report, to go on from (its steps are kept)."""
    path = path / "bisect.json" if path.is_dir() else path
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume {path}: cannot read a bisect.json ({exc}); give the "
                          "bisect.json (or its directory) of an earlier `labctl bisect`") from None
    if report.get("format") != FORMAT or "run_id" not in report:
        raise ConfigError(f"--resume {path}: not a bisect.json of this labctl (format "
                          f"{report.get('format')!r}, expected {FORMAT})")
    if report.get("state") == "done":
        raise ConfigError(f"--resume {path}: that bisection is finished (see bisect.md next to it)")
    if report["source"]["kind"] == "tree":
        check_tree(Path(report["source"]["where"]))
    say(f"bisect: resuming {report['run_id']} after {len(report['steps'])} tested revision(s)")
    report["state"] = "running"
    return {**report, "_dir": path.parent}  # the report stays where it is

