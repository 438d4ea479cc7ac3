"""labctl bisect without QEMU: git's exit codes for a step, the checks of both ends, the
input checks against real small git repositories, the private worktree, the Debian
version range and the report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from labctl import cli
from labctl.campaigns.bisect import recipe_for
from labctl.campaigns.bisect_debian import Version, family, next_probe, parse_madison, pick_range
from labctl.campaigns.bisect_git import Worktree, check_range, check_tree, describe, parse_next, resolve
from labctl.campaigns.bisect_report import (
    BAD,
    GOOD,
    SKIP,
    EndUntested,
    Run,
    Step,
    Untrusted,
    check_end,
    classify,
    estimate_steps,
    needs_retry,
    progress_line,
    render_markdown,
)
from labctl.config.schema import load_lab
from labctl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def run(outcome: str, code: int, reason: str = "why") -> Run:
    return Run(outcome, code, reason, f"/art/r/{outcome}", 1.0)


PASSED, FAILED = run("purgatory-refused", 0), run("capture-booted", 1, "expected purgatory-refused")
INFRA, CONFIG = run("infra-error", 3, "guest never booted"), run("config-error", 2, "no KEXEC_FILE")


# ------------------------------------------------------------ git's codes for a step

@pytest.mark.parametrize("runs,code,words", [
    ([PASSED], GOOD, "1 of 1 run(s) passed"),
    ([PASSED, PASSED, PASSED], GOOD, "3 of 3 run(s) passed"),
    ([FAILED], BAD, "1 of 1 run(s) failed: capture-booted"),
    ([PASSED, PASSED, FAILED], BAD, "1 of 3 run(s) failed"),  # --runs 3: one failure is bad
    ([PASSED, INFRA], SKIP, "no verdict: infra-error: guest never booted"),
    ([CONFIG], SKIP, "no verdict: config-error: no KEXEC_FILE"),
    ([INFRA, FAILED], BAD, "failed"),  # a verdict outranks the lab's error
    ([], SKIP, "no run"),
])
def test_a_step_maps_to_gits_exit_codes(runs, code, words):
    got, reason = classify(runs)
    assert got == code
    assert words in reason


def test_only_infrastructure_errors_are_retried():
    assert needs_retry(INFRA)
    assert not any(needs_retry(r) for r in (PASSED, FAILED, CONFIG))


def end(role: str, code: int, runs: list[Run]) -> Step:
    return Step(role, "a" * 40 if role == "good end" else "b" * 40, "subject", code, "reason", runs=runs)


@pytest.mark.parametrize("good,bad,exit_code,words", [
    (end("good end", BAD, [FAILED]), end("bad end", BAD, [FAILED]), 2, "fails crash-corrupt too"),
    (end("good end", GOOD, [PASSED]), end("bad end", GOOD, [PASSED]), 2, "nothing to bisect"),
    (end("good end", SKIP, [INFRA, INFRA]), end("bad end", BAD, [FAILED]), 3, "could not be tested"),
    (end("good end", GOOD, [PASSED]), end("bad end", SKIP, []), 2, "bad end bbbbbbbbbbbb could not"),
])
def test_ends_that_do_not_behave_abort_the_bisection(good, bad, exit_code, words):
    with pytest.raises((Untrusted, EndUntested)) as caught:
        for step in (bad, good):  # the bad end is tested (and checked) first
            check_end(step, "crash-corrupt")
    assert caught.value.exit_code == exit_code and words in str(caught.value)


def test_ends_that_behave_pass_the_check():
    check_end(end("good end", GOOD, [PASSED]), "crash-corrupt")
    check_end(end("bad end", BAD, [FAILED]), "crash-corrupt")


@pytest.mark.parametrize("candidates,steps", [(1, 0), (2, 1), (5, 3), (8, 3), (9, 4), (1000, 10)])
def test_the_estimate_of_steps_is_log2_of_the_range(candidates, steps):
    assert estimate_steps(candidates) == steps


# ------------------------------------------------------------ real git repositories

def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "A U Thor", "GIT_AUTHOR_EMAIL": "a@example.invalid",
           "GIT_COMMITTER_NAME": "C O Mitter", "GIT_COMMITTER_EMAIL": "c@example.invalid",
           "PATH": "/usr/bin:/bin", "HOME": str(repo)}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    """c0..c5 on master (c3 touches bug.c), a side branch from c1, a dirty user checkout."""
    path = tmp_path / "user"
    path.mkdir()
    git(path, "init", "-q", "-b", "master")
    for i in range(6):
        name = "bug.c" if i == 3 else "file.txt"
        (path / name).write_text(f"{i}\n")
        git(path, "add", name)
        git(path, "commit", "-q", "-m", f"c{i}")
        git(path, "tag", f"c{i}")
    git(path, "checkout", "-q", "-b", "side", "c1")
    (path / "side.txt").write_text("side\n")
    git(path, "add", "side.txt")
    git(path, "commit", "-q", "-m", "side")
    git(path, "checkout", "-q", "master")
    (path / "file.txt").write_text("the user's unsaved work\n")  # never touched
    (path / "staged.txt").write_text("staged\n")
    git(path, "add", "staged.txt")
    return path


def test_a_directory_that_is_not_a_git_tree_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not a git repository"):
        check_tree(tmp_path)
    with pytest.raises(ConfigError, match="no such directory"):
        check_tree(tmp_path / "missing")


def test_revisions_are_resolved_or_refused(repo):
    assert resolve(repo, "c2", "--good") == git(repo, "rev-parse", "c2")
    with pytest.raises(ConfigError, match="--bad v9.9: no such commit"):
        resolve(repo, "v9.9", "--bad")
    with pytest.raises(ConfigError, match="no such commit"):
        resolve(repo, "--output=/tmp/x", "--good")  # an option is a revision name, not an option


def test_good_must_be_an_ancestor_of_bad(repo):
    sha = {t: git(repo, "rev-parse", t) for t in ("c0", "c5", "side")}
    assert check_range(repo, sha["c0"], sha["c5"]) == 5
    with pytest.raises(ConfigError, match="is not an ancestor"):
        check_range(repo, sha["c5"], sha["c0"])  # swapped
    with pytest.raises(ConfigError, match="is not an ancestor"):
        check_range(repo, sha["side"], sha["c5"])  # another branch
    with pytest.raises(ConfigError, match="the same commit"):
        check_range(repo, sha["c5"], sha["c5"])


def user_state(repo: Path) -> tuple[str, ...]:
    return (git(repo, "rev-parse", "HEAD"), git(repo, "symbolic-ref", "HEAD"),
            git(repo, "status", "--porcelain"), git(repo, "for-each-ref"),
            (repo / "file.txt").read_text())


def test_git_bisect_runs_in_a_private_worktree_and_leaves_the_user_alone(repo, tmp_path):
    before = user_state(repo)
    tree = Worktree(repo, tmp_path / "cache" / "bisect" / "src")
    tree.add("c5")
    sha = {t: git(repo, "rev-parse", t) for t in ("c0", "c3", "c5")}
    nxt = parse_next(tree.bisect("start", sha["c5"], sha["c0"]), tree.head())
    seen = []
    while nxt.rev:
        seen.append(nxt.rev)
        assert nxt.left is not None and nxt.steps is not None
        code = "bad" if (tree.path / "bug.c").exists() else "good"
        nxt = parse_next(tree.bisect(code, nxt.rev), tree.head())
    assert nxt.first_bad == sha["c3"]
    log = tree.bisect_log()
    assert "\ngit bisect start " in log and f"# first bad commit: [{sha['c3']}] c3" in log
    assert user_state(repo) == before  # HEAD, branch, index, refs, files
    # the user's checkout is not bisecting: refs/bisect and BISECT_LOG are the worktree's
    assert subprocess.run(["git", "-C", str(repo), "bisect", "log"], capture_output=True).returncode != 0
    tree.remove()
    assert not tree.path.exists()
    assert str(tree.path) not in git(repo, "worktree", "list")
    assert user_state(repo) == before


def test_only_skipped_commits_left_names_the_candidates(repo, tmp_path):
    tree = Worktree(repo, tmp_path / "wt")
    tree.add("c5")
    sha = {t: git(repo, "rev-parse", t) for t in ("c2", "c3", "c5")}
    nxt = parse_next(tree.bisect("start", sha["c5"], sha["c2"]), tree.head())
    while nxt.rev:
        nxt = parse_next(tree.bisect("skip" if nxt.rev == sha["c3"] else "bad", nxt.rev), tree.head())
    assert nxt.first_bad is None and set(nxt.candidates) == {sha["c3"], git(repo, "rev-parse", "c4")}
    tree.remove()


def test_a_revert_that_applies_and_one_that_does_not(repo, tmp_path):
    tree = Worktree(repo, tmp_path / "wt")
    tree.add("c5")
    assert tree.revert(git(repo, "rev-parse", "c3")) is None
    assert not (tree.path / "bug.c").exists()
    tree.clean()
    assert (tree.path / "bug.c").read_text() == "3\n"
    conflict = tree.revert(git(repo, "rev-parse", "c2"))  # c4 changed the same line since
    assert conflict and "conflict" in conflict.lower()
    assert tree.head() == git(repo, "rev-parse", "c5")
    tree.remove()


def test_a_commit_is_described_with_its_files(repo):
    commit = describe(repo, git(repo, "rev-parse", "c3"))
    assert (commit.subject, commit.author, commit.files) == ("c3", "A U Thor <a@example.invalid>",
                                                             ("bug.c",))


# ------------------------------------------------------------ the command line

def run_cli(tmp_path, capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["--lab", str(ROOT / "lab.yaml"), "bisect", *args,
                     "--artifacts", str(tmp_path / "artifacts")])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args,words", [
    (("crash-corrupt", "--tree", "{tmp}", "--good", "c0", "--bad", "c5"), "not a git repository"),
    (("crash-corrupt", "--tree", "{repo}", "--good", "c0", "--bad", "nope"), "--bad nope: no such commit"),
    (("crash-corrupt", "--tree", "{repo}", "--good", "side", "--bad", "c5"), "is not an ancestor"),
    (("crash-corrupt", "--tree", "{repo}", "--good", "c0"), "give both --good"),
    (("crash-corrupt", "--good", "c0", "--bad", "c5"), "exactly one of --tree"),
    (("crash-corrupt", "--tree", "{repo}", "--good", "c0", "--bad", "c5", "--recipe", "debian-6.12"),
     "--recipe debian-6.12: not a recipe kernel"),
    (("no-such-scenario", "--tree", "{repo}", "--good", "c0", "--bad", "c5"), "unknown scenario"),
    (("crash-corrupt", "--tree", "{repo}", "--good", "c0", "--bad", "c5", "--kernel-config", "{tmp}/x.config"),
     "x.config: no such file"),
    (("--resume", "{tmp}/nowhere.json"), "cannot read a bisect.json"),
    (("crash-corrupt", "--debian", "kernel-of-mine", "--good", "1", "--bad", "2"),
     "not a Debian kernel image package name"),
])
def test_bad_input_exits_2_with_what_to_do_and_nothing_started(repo, tmp_path, capsys, args, words):
    argv = [a.format(tmp=tmp_path / "plain", repo=repo) for a in args]
    (tmp_path / "plain").mkdir()
    before = user_state(repo)
    code, err = run_cli(tmp_path, capsys, *argv)
    assert code == 2, err
    assert words in err, err
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").iterdir())
    assert user_state(repo) == before
    assert git(repo, "worktree", "list").count("\n") == 0


def test_kernel_config_fragments_follow_the_recipes_own():
    lab = load_lab(ROOT / "lab.yaml")
    plain = recipe_for(lab, "tiny-6.12")
    extra = ROOT / "guests" / "kernels" / "kexec-sig.config"
    merged = recipe_for(lab, "tiny-6.12", [str(extra)])
    assert merged.fragments == (*plain.fragments, extra) and merged.patches == plain.patches


def test_a_finished_bisection_is_not_resumed(tmp_path, capsys):
    (tmp_path / "bisect.json").write_text(json.dumps({"format": 1, "run_id": "r", "state": "done",
                                                      "source": {"kind": "tree", "where": "/"}}))
    code, err = run_cli(tmp_path, capsys, "--resume", str(tmp_path))
    assert code == 2 and "that bisection is finished" in err


# ------------------------------------------------------------ Debian versions

# `apt-cache madison` of linux-image-6.12.*+deb12-cloud-amd64 as this archive answered it
MADISON = (ROOT / "tests" / "data" / "bisect" / "madison-6.12-cloud-amd64.txt").read_text()


def test_madison_lines_become_versions_once_each():
    versions = parse_madison(MADISON + MADISON.splitlines()[0] + "\n")  # a second archive
    assert [v.version for v in versions] == ["6.12.100-1~deb12u1", "6.12.101-1~deb12u1",
                                             "6.12.107-1~deb12u1", "6.12.111-1~deb12u1",
                                             "6.12.113-1~deb12u1", "6.12.115-2~deb12u1",
                                             "6.12.117-1~deb12u1"]


@pytest.mark.parametrize("package,expected", [
    ("linux-image-6.12-cloud-amd64", ("6.12", "cloud-amd64")),
    ("linux-image-cloud-amd64", (None, "cloud-amd64")),
    ("linux-image-6.12.115+deb12-cloud-amd64", ("6.12", "cloud-amd64")),
    ("linux-image-6.1.0-50-cloud-amd64", ("6.1", "cloud-amd64")),
])
def test_a_package_names_its_flavour_and_series(package, expected):
    assert family(package) == expected


def test_the_version_range_is_checked():
    versions = parse_madison(MADISON)
    picked = pick_range(versions, "6.12.101", "linux-image-6.12.115+deb12-cloud-amd64", "p")
    assert [v.version.split("-")[0] for v in picked] == ["6.12.101", "6.12.107", "6.12.111", "6.12.113",
                                                         "6.12.115"]
    with pytest.raises(ConfigError, match=r"--good 6.12.99: no such version .*it has: 6.12.100-1"):
        pick_range(versions, "6.12.99", "6.12.115", "p")
    with pytest.raises(ConfigError, match="is not older than"):
        pick_range(versions, "6.12.115", "6.12.100", "p")


def test_the_version_search_halves_and_steps_around_skips():
    assert next_probe({0: GOOD, 8: BAD}, 9) == (4, 8, 0)
    assert next_probe({0: GOOD, 8: BAD, 4: BAD}, 9) == (2, 4, 0)
    assert next_probe({0: GOOD, 8: BAD, 4: SKIP}, 9) == (3, 8, 0)  # the nearest untested
    assert next_probe({0: GOOD, 4: BAD, 2: GOOD, 3: GOOD}, 9) == (None, 4, 3)
    assert next_probe({0: GOOD, 3: BAD, 1: SKIP, 2: SKIP}, 4) == (None, 3, 0)
    assert Version("p", "6.12.100-1").matches("6.12.100")


# ------------------------------------------------------------ the report

def report(tmp_path: Path) -> dict:
    good = Step("good end", "a" * 40, "base", GOOD, "1 of 1 run(s) passed", 200.5, 30.0,
                runs=[Run("purgatory-refused", 0, "", str(tmp_path / "01/crash-corrupt"), 30.0)])
    broken = Step("step", "c" * 40, "breaks the build", SKIP, "build failed: kernel/panic.c:1",
                  12.0, 0.0)
    return {"scenario": "crash-corrupt", "state": "done", "runs": 1, "recipe": "tiny-6.12",
            "source": {"kind": "tree", "where": "/src/linux"}, "good": "a" * 40, "bad": "b" * 40,
            "seconds": 600.2, "steps": [good.to_json(), broken.to_json()],
            "first_bad": {"sha": "d" * 40, "subject": "kexec_file: skip the kernel", "author":
                          "A <a@x>", "date": "2023-11-15T02:13:20+00:00", "files": ["kernel/kexec_file.c"]},
            "revert": {"summary": "With `dddd` reverted, crash-corrupt is good again."},
            "log": "git bisect start 'b' 'a'\n# first bad commit: [dddd] kexec_file\n"}


def test_the_report_names_the_commit_every_step_and_the_log(tmp_path):
    text = render_markdown(report(tmp_path), tmp_path)
    assert text.startswith("# Bisection of crash-corrupt: done")
    assert f"`{'d' * 40}` kexec_file: skip the kernel" in text
    assert "- files: `kernel/kexec_file.c`" in text
    assert "| 1 | good end | `aaaaaaaaaaaa` | base | good | 200 s | 30 s | [1](01/crash-corrupt) |" in text
    assert "| 2 | step | `cccccccccccc` | breaks the build | skip | 12 s | 0 s | - | build failed" in text
    assert "## Revert check\n\nWith `dddd` reverted" in text
    assert "```\ngit bisect start 'b' 'a'\n# first bad commit: [dddd] kexec_file\n```" in text
    assert "- whole bisection: 600 s" in text


def test_steps_survive_json_and_the_live_line_says_how_far(tmp_path):
    for data in report(tmp_path)["steps"]:
        assert Step.from_json(json.loads(json.dumps(data))).to_json() == data
    line = progress_line(3, "e" * 40, "a subject", 4, 2, "step: building")
    assert line == "bisect step 3: step: building eeeeeeeeeeee 'a subject'; 4 revision(s) left, ~2 step(s) to go"


def test_a_saved_bisect_log_replays_in_a_new_worktree(repo, tmp_path):
    """What --resume does: the log of a stopped bisection brings a new worktree to the same
    next commit, and the bisection ends where an uninterrupted one would."""
    sha = {t: git(repo, "rev-parse", t) for t in ("c0", "c3", "c5")}
    first = Worktree(repo, tmp_path / "first")
    first.add("c5")
    nxt = parse_next(first.bisect("start", sha["c5"], sha["c0"]), first.head())
    nxt = parse_next(first.bisect("bad" if (first.path / "bug.c").exists() else "good", nxt.rev),
                     first.head())
    log, where = first.bisect_log(), nxt
    first.remove()  # Ctrl-C
    (tmp_path / "saved.log").write_text(log)
    again = Worktree(repo, tmp_path / "first")  # the same place, as a resumed run uses
    again.add("c5")
    resumed = parse_next(again.bisect("replay", str(tmp_path / "saved.log")), again.head())
    assert (resumed.rev, resumed.left) == (where.rev, where.left)
    while resumed.rev:
        resumed = parse_next(again.bisect("bad" if (again.path / "bug.c").exists() else "good",
                                          resumed.rev), again.head())
    assert resumed.first_bad == sha["c3"]
    again.remove()


def test_a_subject_with_a_bar_stays_in_its_cell(tmp_path):
    data = report(tmp_path)
    data["steps"][0]["label"] = "x86: a | b"
    assert "| x86: a \\| b | good |" in render_markdown(data, tmp_path)


def test_versions_are_in_dpkgs_order_and_metapackages_are_not_versions():
    from labctl.campaigns.bisect_debian import VERSIONED, dpkg_sorted

    mixed = [Version("p", v) for v in ("6.12.117-1~deb12u1", "6.1.192-3", "1.0a-1", "6.12.9-1",
                                       "1.0~rc1-1", "1.0-1+b1", "1.0-1")]
    assert [v.version for v in dpkg_sorted(mixed)] == [
        "1.0~rc1-1", "1.0-1", "1.0-1+b1", "1.0a-1", "6.1.192-3", "6.12.9-1", "6.12.117-1~deb12u1"]
    assert VERSIONED.match("linux-image-6.12.115+deb12-cloud-amd64")
    assert VERSIONED.match("linux-image-6.1.0-50-cloud-amd64")
    assert not VERSIONED.match("linux-image-6.12-cloud-amd64")  # follows the newest only


def test_a_failed_build_is_named_by_its_first_error(tmp_path):
    from labctl.campaigns.bisect import first_error

    log = tmp_path / "build.log"
    log.write_text("  CC      kernel/panic.o\n"
                   f"{tmp_path}/src/kernel/panic.c: In function 'x':\n"
                   f"{tmp_path}/src/kernel/panic.c:55:25: error: expected expression before ';' token\n"
                   "make[4]: *** [scripts/Makefile.build:229: kernel/panic.o] Error 1\n")
    assert first_error(log, tmp_path / "src") == "kernel/panic.c:55:25: error: expected expression before ';' token"
    log.write_text("make: *** No rule to make target 'bzImage'.  Stop.\n")
    assert first_error(log, tmp_path / "src") == "make: *** No rule to make target 'bzImage'.  Stop."
    assert first_error(tmp_path / "missing.log", tmp_path) == "no build log"
