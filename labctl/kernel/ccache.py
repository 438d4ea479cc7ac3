"""Compiler cache for recipe builds: recipes that differ by a patch or an option rebuild
only the objects the difference reaches.

Every build compiles in its own work directory (.work-KEY/src, .work-KEY/obj), so the
paths are made to hash alike: CCACHE_BASEDIR turns absolute paths under the lab's cache
directory into paths relative to the compiler's working directory, -fdebug-prefix-map
names the work directory the same in every build (debug info then points nowhere
build-specific, and ccache hashes the mapped directory), and the build user, host and
timestamp are fixed (init/version.c, include/generated/compile.h).  An option that
changes include/generated/autoconf.h misses ccache's direct mode everywhere (every object
includes it), then hits in preprocessor mode wherever the option does not change the
preprocessed source.  Each build counts its own calls through a private stats log
(ccache's stats_log), so builds running at once do not mix their figures.
"""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

from labctl.tools import run_tool

CCACHE_SUBDIR = "ccache"  # inside the lab's cache directory
# One fixed timestamp for every build: `uname -v` of a recipe kernel says it, and objects
# that include generated/compile.h stay cache hits.
BUILD_TIMESTAMP = "Thu Jan  1 00:00:00 UTC 1970"
PREFIX = "/kexec-lab-build"  # what every work directory is called in debug info
VERSION_SECONDS = 30.0
HITS = ("direct_cache_hit", "preprocessed_cache_hit")
MISSES = ("cache_miss",)


def available() -> str | None:
    """The ccache binary, or None: builds then compile everything (and say so)."""
    return shutil.which("ccache")


def version(binary: str) -> str:
    proc = run_tool([binary, "--version"], "asking ccache its version", VERSION_SECONDS)
    return proc.stdout.splitlines()[0]


def make_args(binary: str, cc: str, work: Path) -> list[str]:
    """make variables: the compilers through ccache and the work directory mapped away.
    cc is the target compiler (a cross compiler for other arches)."""
    return [f"CC={binary} {cc}", f"HOSTCC={binary} gcc", f"KCFLAGS=-fdebug-prefix-map={work}={PREFIX}"]


def build_identity() -> list[str]:
    """make variables fixed with or without ccache (reproducible version strings)."""
    return ["KBUILD_BUILD_USER=kexec-lab", "KBUILD_BUILD_HOST=kexec-lab",
            f"KBUILD_BUILD_TIMESTAMP={BUILD_TIMESTAMP}"]


def environment(cache_dir: Path, stats_log: Path) -> dict[str, str]:
    """ccache's settings for one build (added to the inherited environment)."""
    return {"CCACHE_DIR": str(cache_dir / CCACHE_SUBDIR), "CCACHE_BASEDIR": str(cache_dir),
            "CCACHE_STATSLOG": str(stats_log)}


def stats(stats_log: Path) -> dict:
    """This build's counts from its stats log: one '# file' line per compiler call, then
    the counters it bumped.  hits = direct + preprocessed hits; rate over cacheable calls."""
    counts: collections.Counter[str] = collections.Counter()
    calls = 0
    if stats_log.is_file():
        for line in stats_log.read_text(errors="replace").splitlines():
            if line.startswith("#"):
                calls += 1
            elif line.strip():
                counts[line.strip()] += 1
    hits = sum(counts[c] for c in HITS)
    misses = sum(counts[c] for c in MISSES)
    return {"calls": calls, "hits": hits, "direct_hits": counts["direct_cache_hit"],
            "preprocessed_hits": counts["preprocessed_cache_hit"], "misses": misses,
            "uncacheable": calls - hits - misses,
            "hit_rate": round(hits / (hits + misses), 3) if hits + misses else None}
