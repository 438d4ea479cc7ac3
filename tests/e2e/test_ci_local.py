"""The nightly pipeline run by a real CI engine: `make ci-local` runs .gitlab-ci.yml with
gitlab-ci-local's shell executor (plan -> a child pipeline of shard jobs -> merge) on one
kernel x one scenario, twice.  The second night restores the first night's kernel cache
(no download) and its merge diffs against the first night, which was good.

Two nights of three jobs each, every job setting up its own venv: minutes, hence `full`."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.full]

NIGHT_SECONDS = 2400
KERNEL, SCENARIO = "debian-6.12", "crash-corrupt"


def night(state, number: int) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run(["make", "-C", str(ROOT), "ci-local", f"CI_LOCAL_DIR={state}",
                           f"CI_KERNELS={KERNEL}", f"CI_SCENARIOS={SCENARIO}", "CI_SHARDS=1"],
                          capture_output=True, text=True, timeout=NIGHT_SECONDS, stdin=subprocess.DEVNULL)
    (state.parent / f"night-{number}.log").write_text(proc.stdout + proc.stderr)  # for a failure
    return proc, time.monotonic() - start


def shard_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "lab-shard" in line]


def test_two_nights_on_gitlab_ci_local_the_second_diffs_and_builds_nothing(tmp_path):
    state = tmp_path / "ci-local"
    first, first_seconds = night(state, 1)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    merged = state / "nights" / "1" / "merged"
    summary = (merged / "summary.md").read_text()
    assert f"| {KERNEL} |" in summary and f"| {SCENARIO} | ✅ PASS" in summary, summary
    assert not (merged / "diff.md").exists()  # no good night before the first
    assert "night 1 is the baseline of the next" in first.stdout
    shard = shard_lines(first.stdout)
    assert any(re.search(r"matrix nightly-\S+: 1 pairs in .*: 1 pass", line) for line in shard), shard[-20:]
    cached = list((state / "project" / ".gitlab-ci-local" / "cache").glob(
        f"kernel-{KERNEL}-*/.cache/xdg/kexec-lab/kernels/linux-image-*"))
    assert cached, "the shard's kernel cache holds the Debian kernel it fetched"

    second, second_seconds = night(state, 2)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    shard = shard_lines(second.stdout)
    assert any("imported cache 'kernel-debian-6.12-" in line for line in shard), "\n".join(shard[-20:])
    assert not any("downloading linux-image" in line for line in shard)  # the cache had it
    diff = (state / "nights" / "2" / "merged" / "diff.md").read_text()
    header = re.match(r"# What changed: (nightly-\S+) -> (nightly-\S+)", diff)
    assert header and header[1] != header[2], diff  # night 1's shard run -> night 2's
    assert "1 pairs now, 1 in the baseline" in diff, diff
    assert "Nothing changed." in diff or re.search(r"^## ", diff, re.M), diff  # or what did
    wall = [int(m[1]) for line in shard if (m := re.search(r"shard \S+ 1/1: (\d+) s wall", line))]
    print(f"ci-local: night 1 {first_seconds:.0f} s, night 2 {second_seconds:.0f} s; "
          f"night 2 shard (warm kernel cache) {wall} s")
