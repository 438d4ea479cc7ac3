"""labctl bisect --debian end to end, on what this archive holds: Debian's 6.12 kernels
all keep crash-corrupt's promise, so a bisection from 6.12.115 to the newest must stop at
its bad end (it passes: nothing to bisect), after one real boot of the newest kernel
(the one `labctl run` uses, so already in the cache)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from conftest import labctl

pytestmark = pytest.mark.e2e


def test_a_bad_end_that_passes_stops_the_debian_bisection(tmp_path, no_leaks):
    run_id = f"bisect-deb-{secrets.token_hex(3)}"
    art = tmp_path / "artifacts"
    done = labctl("bisect", "crash-corrupt", "--debian", "linux-image-6.12-cloud-amd64",
                  "--good", "6.12.115", "--bad", "linux-image-6.12.117+deb12-cloud-amd64",
                  "--artifacts", str(art), "--run-id", run_id, timeout=900)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "configuration error: the bad end 6.12.117-1~deb12u1 passes crash-corrupt" in done.stderr
    assert "nothing to bisect" in done.stderr
    report = json.loads((art / run_id / "bisect.json").read_text())
    assert report["state"] == "aborted"
    assert [v["version"] for v in report["versions"]] == ["6.12.115-2~deb12u1", "6.12.117-1~deb12u1"]
    [bad] = report["steps"]  # the good end is not even fetched
    assert (bad["role"], bad["verdict"], bad["build_seconds"]) == ("bad end", "good", None)
    assert bad["runs"][0]["outcome"] == "purgatory-refused"
    result = json.loads((Path(bad["runs"][0]["artifacts"]) / "result.json").read_text())
    assert result["kernel"]["version"] == "6.12.117-1~deb12u1" and result["passed"] is True
    assert "| 1 | bad end | `6.12.117-1~deb12u1` |" in (art / run_id / "bisect.md").read_text()
