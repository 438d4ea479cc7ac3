"""Recipe builds through ccache: two builds of the same source in different work
directories (as two recipes are built) share objects, the object names neither work
directory, and each build's counts come from its own stats log.  Real ccache and gcc on a
two-file tree, driven by make with the variables the recipe build passes to kbuild."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from labctl.kernel import ccache

MAKEFILE = """\
obj/%.o: src/%.c
\tmkdir -p obj && cd obj && $(CC) $(KCFLAGS) -g -O2 -I../src -c ../src/$*.c -o $*.o
all: obj/a.o obj/b.o
"""


def build(cache_dir: Path, work: Path, sources: dict[str, str]) -> dict:
    (work / "src").mkdir(parents=True)
    for name, text in sources.items():
        (work / "src" / name).write_text(text)
    (work / "Makefile").write_text(MAKEFILE)
    binary = ccache.available()
    assert binary, "ccache is installed by make setup (Debian package ccache)"
    stats_log = work / "ccache-stats.log"
    subprocess.run(["make", "-s", "-C", str(work), "all", *ccache.make_args(binary, "gcc", work)],
                   env={**os.environ, **ccache.environment(cache_dir, stats_log)}, check=True,
                   timeout=120)
    return ccache.stats(stats_log)


SOURCES = {"a.c": "#include \"a.h\"\nint a(void) { return A; }\n", "a.h": "#define A 1\n",
           "b.c": "int b(void) { return 2; }\n"}


def test_a_second_work_directory_hits_and_a_change_misses_only_its_object(tmp_path):
    cache = tmp_path / "cache"
    first = build(cache, cache / "kernel-builds" / ".work-1111", SOURCES)
    assert (first["calls"], first["hits"], first["misses"]) == (2, 0, 2)
    second = build(cache, cache / "kernel-builds" / ".work-2222", SOURCES)
    assert (second["hits"], second["misses"], second["hit_rate"]) == (2, 0, 1.0)
    assert second["direct_hits"] == 2
    patched = build(cache, cache / "kernel-builds" / ".work-3333", {**SOURCES, "b.c": "int b(void) { return 3; }\n"})
    assert (patched["hits"], patched["misses"]) == (1, 1)
    obj = (cache / "kernel-builds" / ".work-2222" / "obj" / "a.o").read_bytes()
    assert b".work-" not in obj and ccache.PREFIX.encode() in obj  # debug info names no build dir
    assert (cache / ccache.CCACHE_SUBDIR).is_dir()


def test_no_stats_log_means_no_calls(tmp_path):
    assert ccache.stats(tmp_path / "missing.log") == {
        "calls": 0, "hits": 0, "direct_hits": 0, "preprocessed_hits": 0, "misses": 0,
        "uncacheable": 0, "hit_rate": None}
