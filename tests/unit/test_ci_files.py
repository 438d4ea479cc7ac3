"""The shipped CI definitions: the GitHub workflow passes actionlint, and every labctl
command in either CI file parses with labctl's own parser and uses the keys that
`labctl matrix --emit` produces."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from labctl.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "nightly.yml"
GITLAB = [ROOT / ".gitlab-ci.yml", ROOT / ".gitlab" / "lab-jobs.yml"]
ACTIONLINT = Path(sys.executable).parent / "actionlint"
LABCTL_CALL = re.compile(r"\.venv/bin/labctl ([^\n)]*)")
SAMPLE_VALUES = {"KERNEL": "debian-6.12", "SHARD": "1/2", "SHARDS": "2", "RUN_ID": "nightly-1",
                 "CI_PIPELINE_ID": "7", "CI_JOB_ID": "9"}


def actionlint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(ACTIONLINT), "-color=false", str(path)], capture_output=True,
                          text=True, timeout=120)


def test_workflow_passes_actionlint():
    proc = actionlint(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_does_catch_a_broken_workflow(tmp_path):
    """The check above means something: a typo in a job reference is reported."""
    broken = tmp_path / ".github" / "workflows" / "nightly.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(WORKFLOW.read_text().replace("needs.plan.outputs.matrix", "needs.plann.outputs.matrix"))
    proc = actionlint(broken)
    assert proc.returncode != 0 and "plann" in proc.stdout


def _run_texts(document) -> list[str]:
    """Every shell text in a workflow (steps' run) or a GitLab file (script lists)."""
    if isinstance(document, dict):
        texts = [document["run"]] if isinstance(document.get("run"), str) else []
        if isinstance(document.get("script"), list):
            texts += document["script"]
        return texts + [t for value in document.values() for t in _run_texts(value)]
    if isinstance(document, list):
        return [t for item in document for t in _run_texts(item)]
    return []


def labctl_calls(path: Path) -> list[list[str]]:
    calls = []
    for text in _run_texts(yaml.safe_load(path.read_text())):
        for match in LABCTL_CALL.finditer(text):
            argv = shlex.split(re.sub(r"\$(\w+)", lambda m: SAMPLE_VALUES.get(m[1], m[0]), match[1]))
            calls.append(argv[:argv.index(">")] if ">" in argv else argv)
    return calls


@pytest.mark.parametrize("path", [WORKFLOW, *GITLAB], ids=lambda p: p.name)
def test_labctl_commands_in_ci_parse(path):
    calls = labctl_calls(path)
    assert calls, f"no labctl command found in {path}"
    for argv in calls:
        args = build_parser().parse_args(argv)
        assert args.func is not None
        assert not any("$" in a for a in argv), argv  # every variable is a known one


def test_ci_files_use_the_keys_labctl_emits():
    workflow = WORKFLOW.read_text()
    for key in ("kernel", "shard", "shards"):
        assert f"matrix.{key}" in workflow
    jobs = yaml.safe_load(GITLAB[1].read_text())
    assert {".lab-shard", ".lab-merge"} <= set(jobs)
    script = " ".join(jobs[".lab-shard"]["script"])
    assert '--kernels "$KERNEL" --shard "$SHARD"' in script


def test_nightly_diffs_against_the_last_good_night():
    """GitHub: the baseline job's run id feeds the download of the artifact the merge job
    uploads, merged with --baseline, diff.md first in the job summary.  GitLab: the artifacts
    API asks for the job that `labctl matrix --emit gitlab` names, and its artifact paths hold
    what the merge reads back as the baseline."""
    from labctl.campaigns.matrix import emit_gitlab

    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    assert "baseline" in jobs["merge"]["needs"] and jobs["merge"]["permissions"]["actions"] == "read"
    steps = jobs["merge"]["steps"]
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    download = next(s for s in steps if s.get("with", {}).get("path") == "baseline")
    assert download["with"]["name"] == upload["with"]["name"] == "lab-report"
    assert download["with"]["run-id"] == "${{ needs.baseline.outputs.run-id }}"
    find = jobs["baseline"]["steps"][0]["run"]
    assert "run-id=" in find and "--status success" in find
    merges = [s["run"] for s in steps if "report merge" in s.get("run", "")]
    assert any("--baseline baseline/shards" in m for m in merges) and "shards/" in upload["with"]["path"]
    summary = next(s["run"] for s in steps if "GITHUB_STEP_SUMMARY" in s.get("run", ""))
    assert summary.index("diff.md") < summary.index("summary.md")

    merge_job = yaml.safe_load(GITLAB[1].read_text())[".lab-merge"]
    script = "\n".join(merge_job["script"])
    child = emit_gitlab([], 1)
    name = next(k for k, v in child.items() if isinstance(v, dict) and v.get("extends") == ".lab-merge")
    assert f"jobs/artifacts/$CI_DEFAULT_BRANCH/download?job={name}" in script
    assert "--baseline baseline/artifacts" in script and "artifacts/" in merge_job["artifacts"]["paths"]
