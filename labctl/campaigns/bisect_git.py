"""git for `labctl bisect`: check the user's input, and bisect in a private worktree.

The user's checkout, index and branches are never touched: the bisection runs in a
detached worktree (`git worktree add --detach`) under the lab's cache, whose HEAD,
index and refs/bisect/* are its own (git keeps those per worktree).  Removing it is
rmtree + `git worktree prune`, which works even when a git command was killed mid-way.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from labctl.errors import ConfigError, InfraError
from labctl.tools import run_tool

GIT_SECONDS = 600.0  # a worktree of a kernel tree checks out ~90,000 files
LEFT = re.compile(r"Bisecting: (\d+) revisions? left to test after this \(roughly (\d+) steps?\)")
FIRST_BAD = re.compile(r"^([0-9a-f]{40}) is the first bad commit", re.MULTILINE)
ONLY_SKIPPED = "There are only 'skip'ped commits left to test"


def git(repo: Path, *args: str, check: bool = True, timeout: float = GIT_SECONDS) -> str:
    """One git command in `repo` (a worktree or a repository); its stdout."""
    proc = run_tool(["git", "-C", str(repo), *args], f"git {args[0]} in {repo}", timeout,
                    check=check)
    return proc.stdout


def _git_ok(repo: Path, *args: str) -> bool:
    return run_tool(["git", "-C", str(repo), *args], f"git {args[0]}", GIT_SECONDS,
                    check=False).returncode == 0


def check_tree(path: Path) -> Path:
    """The repository `--tree` names (a checkout or a bare repository), or exit 2."""
    if not path.is_dir():
        raise ConfigError(f"--tree {path}: no such directory; give the path of a kernel git "
                          "checkout (or a bare repository)")
    proc = run_tool(["git", "-C", str(path), "rev-parse", "--absolute-git-dir"],
                    "checking --tree", GIT_SECONDS, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"--tree {path}: not a git repository ({proc.stderr.strip()}); "
                          "give the path of a kernel git checkout, or `git init` one")
    return path.resolve()


def resolve(repo: Path, rev: str, flag: str) -> str:
    """A revision as a full commit id, or exit 2 naming the flag."""
    proc = run_tool(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", "--end-of-options",
                     f"{rev}^{{commit}}"], f"resolving {flag} {rev}", GIT_SECONDS, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise ConfigError(f"{flag} {rev}: no such commit in {repo}; `git -C {repo} log "
                          "--oneline` lists the commits (fetch the revision first if it is remote)")
    return proc.stdout.strip()


def check_range(repo: Path, good: str, bad: str) -> int:
    """Good must be a proper ancestor of bad; returns the number of commits between them
    (good excluded, bad included)."""
    if good == bad:
        raise ConfigError(f"--good and --bad are the same commit ({good[:12]}): give a good "
                          "revision older than the bad one")
    if not _git_ok(repo, "merge-base", "--is-ancestor", good, bad):
        raise ConfigError(f"--good {good[:12]} is not an ancestor of --bad {bad[:12]}: the "
                          "bisection needs good older than bad on one history (swap them, or "
                          f"pick a good revision from `git -C {repo} log {bad[:12]}`)")
    return int(git(repo, "rev-list", "--count", f"{good}..{bad}").strip())


@dataclass(frozen=True)
class Commit:
    """What the report says about one commit."""

    sha: str
    subject: str
    author: str
    date: str
    files: tuple[str, ...]

    def to_json(self) -> dict:
        return {"sha": self.sha, "subject": self.subject, "author": self.author,
                "date": self.date, "files": list(self.files)}


def describe(repo: Path, sha: str) -> Commit:
    out = git(repo, "show", "--no-patch", "--format=%H%x00%s%x00%an <%ae>%x00%aI", sha)
    full, subject, author, date = out.strip().split("\0")
    files = git(repo, "diff-tree", "--no-commit-id", "--name-only", "-r", "--root", sha).split()
    return Commit(full, subject, author, date, tuple(files))


def subject(repo: Path, sha: str) -> str:
    return git(repo, "show", "--no-patch", "--format=%s", sha).strip()


class Worktree:
    """A detached worktree of `repo` at `path`, the bisection's only place to write."""

    def __init__(self, repo: Path, path: Path):
        self.repo, self.path = repo, path

    def add(self, rev: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        git(self.repo, "worktree", "add", "--detach", "--quiet", str(self.path), rev)

    def remove(self) -> None:
        """Remove the files and git's record of the worktree (its bisect state goes too)."""
        shutil.rmtree(self.path, ignore_errors=True)
        subprocess.run(["git", "-C", str(self.repo), "worktree", "prune"], capture_output=True,
                       timeout=GIT_SECONDS, check=False)

    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD").strip()

    def checkout(self, rev: str) -> None:
        self.clean()
        git(self.path, "checkout", "--quiet", "--detach", rev)

    def clean(self) -> None:
        """Undo patches and reverts: tracked files back to HEAD, untracked ones gone
        (only the files that differ are rewritten, so make sees only those as new)."""
        git(self.path, "reset", "--hard", "--quiet", "HEAD")
        git(self.path, "clean", "-fdxq")

    # ---------------------------------------------------------- git bisect

    def bisect(self, *args: str) -> str:
        """One `git bisect` command; its output (stdout and stderr: git says both)."""
        proc = run_tool(["git", "-C", str(self.path), "bisect", *args], f"git bisect {args[0]}",
                        GIT_SECONDS, check=False)
        said = proc.stdout + proc.stderr
        if proc.returncode != 0 and not FIRST_BAD.search(said) and ONLY_SKIPPED not in said:
            raise InfraError(f"git bisect {' '.join(args)} failed in {self.path}: {said.strip()[-600:]}")
        return said

    def bisect_log(self) -> str:
        return git(self.path, "bisect", "log", check=False)

    def revert(self, sha: str) -> str | None:
        """Revert `sha` in the worktree without committing; None if it applies, else why not."""
        proc = run_tool(["git", "-C", str(self.path), "revert", "--no-commit", sha],
                        f"git revert {sha[:12]}", GIT_SECONDS, check=False)
        if proc.returncode == 0:
            return None
        run_tool(["git", "-C", str(self.path), "revert", "--abort"], "git revert --abort",
                 GIT_SECONDS, check=False)
        return (proc.stdout + proc.stderr).strip()[-600:] or f"git revert exited {proc.returncode}"


@dataclass(frozen=True)
class Next:
    """Where git's bisection stands after a command."""

    rev: str | None  # the commit to test next (None when done)
    left: int | None  # revisions left to test after this one
    steps: int | None  # git's estimate of the steps to go
    first_bad: str | None  # the answer, once git has it
    candidates: tuple[str, ...] = ()  # only skipped commits left: the first bad is one of these


def parse_next(said: str, head: str) -> Next:
    """Read `git bisect good/bad/skip/start`'s words."""
    if m := FIRST_BAD.search(said):
        return Next(None, 0, 0, m[1])
    if ONLY_SKIPPED in said:
        shas = tuple(re.findall(r"^([0-9a-f]{40})\b", said, re.MULTILINE))
        return Next(None, 0, 0, None, shas)
    if found := LEFT.findall(said):  # the last one: `git bisect replay` says one per command
        return Next(head, int(found[-1][0]), int(found[-1][1]), None)
    raise InfraError(f"git bisect said something the lab does not understand: {said.strip()[-400:]}")
