"""A small kernel git history for `labctl bisect`'s end-to-end test, made from Debian's
linux-source-6.12 (the tree kernel/build.py unpacks into the cache for recipes).

A bare repository: one base commit (the whole tree) and five commits on top:
  1 docs            a comment in Documentation (builds, passes)
  2 build-breaker   a syntax error in kernel/panic.c (does not build)
  3 build-fix       takes the syntax error out again (builds, passes)
  4 digest-breaker  kexec_calculate_store_digests() (kernel/kexec_file.c) leaves the
                    kernel segment out of the SHA-256 regions, so purgatory never checks
                    it: crash-corrupt's flipped bytes boot instead of being refused
  5 comment         a comment in kernel/kexec_core.c (bad: includes 4)
Made with git plumbing (hash-object, update-index, commit-tree) against the unpacked tree
as a read-only work tree: the shared tree is never written.  Built once per source version
under the lab cache (a kernel tree's objects take about a minute to write).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from labctl.kernel.build import debian_source, debian_version
from labctl.progress import Progress

FORMAT = 1  # bump when the commits change
PACKAGE = "linux-source-6.12"
IDENTITY = {"GIT_AUTHOR_NAME": "Lab Fixture", "GIT_AUTHOR_EMAIL": "fixture@kexec-lab.invalid",
            "GIT_COMMITTER_NAME": "Lab Fixture", "GIT_COMMITTER_EMAIL": "fixture@kexec-lab.invalid"}
DIGEST_LOOP = "\t\tksegment = &image->segment[i];\n\t\t/*\n\t\t * Skip purgatory"
DIGEST_SKIP = ("\t\tksegment = &image->segment[i];\n"
               "\t\t/* Skip the kernel: it is verified when it is read from the file. */\n"
               "\t\tif (ksegment->kbuf >= image->kernel_buf &&\n"
               "\t\t    ksegment->kbuf < image->kernel_buf + image->kernel_buf_len)\n"
               "\t\t\tcontinue;\n\t\t/*\n\t\t * Skip purgatory")


def _edit(text: str, old: str, new: str, count: int = 1) -> str:
    if text.count(old) < 1:
        raise RuntimeError(f"fixture edit: {old!r} not found in the source")
    return text.replace(old, new, count)


# (subject, file, edit on its text at the previous commit)
COMMITS = [
    ("Documentation: kdump: say where the capture kernel's digest is checked",
     "Documentation/admin-guide/kdump/kdump.rst",
     lambda t: t + "\n.. The capture kernel's segments are checked by purgatory's SHA-256 digest.\n"),
    ("panic: name the taint flags in one place",
     "kernel/panic.c",
     lambda t: _edit(t, "int panic_on_oops", "int panic_taint_names = ;\nint panic_on_oops")),
    ("panic: fix the build (drop the half-written taint table)",
     "kernel/panic.c",
     lambda t: _edit(t, "int panic_taint_names = ;\n", "")),
    ("kexec_file: do not hash the kernel segment twice",
     "kernel/kexec_file.c",
     lambda t: _edit(t, DIGEST_LOOP, DIGEST_SKIP)),
    ("kexec: comment on the crash kernel's reserved range",
     "kernel/kexec_core.c",
     lambda t: _edit(t, "#include <linux/kexec.h>\n",
                     "#include <linux/kexec.h>\n/* The crash kernel lives in crashk_res. */\n")),
]


def _git(repo: Path, *args: str, stdin: bytes | None = None, env: dict | None = None,
         cwd: Path | None = None) -> str:
    """One git command on the bare repository; its output, stripped unless it is a blob."""
    proc = subprocess.run(["git", f"--git-dir={repo}", *args], input=stdin, capture_output=True,
                          check=True, env={**os.environ, **IDENTITY, **(env or {})}, cwd=cwd)
    out = proc.stdout.decode()
    return out if args[0] == "cat-file" else out.strip()


def make_fixture(cache_dir: Path, progress: Progress | None = None) -> Path:
    """The fixture repository (made once per source version); its commits are
    base, then COMMITS in order (`git log --reverse --format=%H`)."""
    progress = progress or Progress("bisect fixture")
    version = debian_version(PACKAGE)
    repo = cache_dir / "bisect-fixture" / f"{PACKAGE}_{version}_v{FORMAT}"
    if (repo / "READY").is_file():
        return repo
    tree = debian_source(PACKAGE, version, cache_dir, progress)
    partial = repo.with_name(repo.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    progress.say(f"making the bisect fixture repository from {tree} ...")
    subprocess.run(["git", "init", "-q", "--bare", str(partial)], check=True)
    _git(partial, "config", "core.compression", "1")
    # the base commit: the unpacked tree as a read-only work tree of this repository
    _git(partial, f"--work-tree={tree}", "add", "-A", "-f", ".", cwd=tree)  # -f: Debian ignores /*
    parent = _git(partial, "commit-tree", _git(partial, "write-tree"), "-m",
                  f"Linux {version} (Debian {PACKAGE})", env=_date(0))
    for number, (subject, path, edit) in enumerate(COMMITS, 1):
        text = _git(partial, "cat-file", "blob", f"{parent}:{path}")
        blob = _git(partial, "hash-object", "-w", "--stdin", stdin=edit(text).encode())
        _git(partial, "update-index", "--cacheinfo", f"100644,{blob},{path}")
        parent = _git(partial, "commit-tree", _git(partial, "write-tree"), "-p", parent,
                      "-m", subject, env=_date(number))
    _git(partial, "update-ref", "refs/heads/master", parent)
    _git(partial, "symbolic-ref", "HEAD", "refs/heads/master")
    (partial / "index").unlink()  # a bare repository: bisect checks out worktrees of it
    (partial / "READY").write_text(f"{PACKAGE} {version}\n")
    os.replace(partial, repo)
    return repo


def _date(number: int) -> dict:
    stamp = f"{1700000000 + 3600 * number} +0000"
    return {"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}


if __name__ == "__main__":  # make it ahead of the test: python tests/e2e/bisect_fixture.py CACHE
    print(make_fixture(Path(sys.argv[1]).expanduser()))
