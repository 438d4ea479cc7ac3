"""The shipped CI definitions: the GitHub workflow passes actionlint, every labctl command
in either CI file and in the ci/ scripts they run parses with labctl's own parser, both
engines run the same shard script with the keys that `labctl ci-plan` produces, and a
shard installs only what its kernel needs."""

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
SCRIPT_RUN = re.compile(r"\bsh (ci/[\w.-]+\.sh)")
LABCTL_CALL = re.compile(r"\.venv/bin/labctl ([^\n)|]*)")
SAMPLE_VALUES = {"KERNEL": "debian-6.12", "SHARD": "1/2", "SHARDS": "2", "RUN_ID": "nightly-1",
                 "CI_PIPELINE_ID": "7", "CI_JOB_ID": "9", "engine": "gitlab", "KERNELS": "debian-6.12",
                 "SCENARIOS": "crash-corrupt crash-intact"}
IF_SET = re.compile(r"\$\{(\w+):\+([^}]*)\}")  # ${VAR:+words}
DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")  # ${VAR:-word}


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


def expand(text: str) -> str:
    """The shell expansions the CI texts use, with sample values."""
    text = IF_SET.sub(lambda m: m[2] if m[1] in SAMPLE_VALUES else "", text)
    text = DEFAULT.sub(lambda m: SAMPLE_VALUES.get(m[1], m[2]), text)
    return re.sub(r"\$(\w+)", lambda m: SAMPLE_VALUES.get(m[1], m[0]), text)


def with_scripts(texts: list[str]) -> list[str]:
    """The texts and, in turn, the text of every ci/ script they run."""
    scripts = {m for t in texts for m in SCRIPT_RUN.findall(t)}
    more = [(ROOT / name).read_text() for name in sorted(scripts)]
    return texts + (with_scripts(more) if more else [])


def labctl_calls(path: Path) -> list[list[str]]:
    texts = [path.read_text()] if path.suffix == ".sh" else _run_texts(yaml.safe_load(path.read_text()))
    texts = with_scripts(texts)
    calls = []
    for text in texts:
        for match in LABCTL_CALL.finditer(text):
            argv = shlex.split(expand(match[1]))
            calls.append(argv[:argv.index(">")] if ">" in argv else argv)
    return calls


def shard_script_calls(text: str) -> list[list[str]]:
    return [shlex.split(line)[:4] for line in text.splitlines() if line.strip().startswith("sh ci/shard.sh")]


@pytest.mark.parametrize("path", [WORKFLOW, *GITLAB], ids=lambda p: p.name)
def test_labctl_commands_in_ci_parse(path):
    calls = labctl_calls(path)
    assert calls, f"no labctl command found in {path}"
    for argv in calls:
        args = build_parser().parse_args(argv)
        assert args.func is not None
        assert not any("$" in a for a in argv), argv  # every variable is a known one


def test_labctl_calls_are_found_in_scripts():
    """The parse test above reads the scripts: the shard's matrix call is among them."""
    calls = labctl_calls(ROOT / "ci" / "shard.sh")
    assert calls[0][:5] == ["matrix", "--kernels", "debian-6.12", "--shard", "1/2"]
    assert calls[0][5:8] == ["--scenarios", "crash-corrupt", "crash-intact"]


def test_both_engines_run_the_same_shard_script_with_the_keys_ci_plan_emits(tmp_path):
    from labctl.campaigns.ci_plan import plan
    from labctl.config.schema import load_lab

    lab = load_lab(ROOT / "lab.yaml")
    github = plan(lab, "github", 2, ["debian-6.12", "tiny-6.12-arm64"], ["crash-corrupt", "crash-intact"])
    keys = set(github["include"][0])
    assert {"kernel", "shard", "shards", "arch", "source", "cache_key", "scenarios"} <= keys
    workflow = yaml.safe_load(WORKFLOW.read_text())
    shard_steps = workflow["jobs"]["shard"]["steps"]
    run = next(s for s in shard_steps if "ci/shard.sh" in s.get("run", ""))
    used = set(re.findall(r"matrix\.(\w+)", WORKFLOW.read_text()))
    assert used <= keys, used - keys
    assert run["env"]["KERNEL_ARCH"] == "${{ matrix.arch }}" and run["env"]["SCENARIOS"] == "${{ matrix.scenarios }}"
    kernel_cache = next(s for s in shard_steps if s.get("name") == "Restore the kernel cache")
    assert kernel_cache["with"]["key"] == "kernel-${{ matrix.kernel }}-${{ matrix.cache_key }}"
    assert shard_script_calls(run["run"]) == [["sh", "ci/shard.sh", "$KERNEL", "$SHARD"]]

    gitlab = plan(lab, "gitlab", 2, ["debian-6.12", "tiny-6.12-arm64"], ["crash-corrupt", "crash-intact"])
    jobs = yaml.safe_load(GITLAB[1].read_text())
    assert {".lab-shard", ".lab-merge"} <= set(jobs) and gitlab["lab-shard"]["extends"] == ".lab-shard"
    assert shard_script_calls("\n".join(jobs[".lab-shard"]["script"])) == [["sh", "ci/shard.sh", "$KERNEL", "$SHARD"]]
    matrix_vars = set(gitlab["lab-shard"]["parallel"]["matrix"][0]) | set(gitlab["lab-shard"]["variables"])
    assert {"KERNEL", "SHARD", "KERNEL_ARCH", "KERNEL_SOURCE", "KERNEL_CACHE_KEY", "SCENARIOS"} <= matrix_vars
    for cache in jobs[".lab-shard"]["cache"]:  # cache keys use only what the plan sets
        assert set(re.findall(r"\$(\w+)", cache["key"])) <= matrix_vars, cache["key"]
    assert gitlab["lab-shard"]["variables"]["SCENARIOS"] == "crash-corrupt crash-intact"
    arm64 = next(e for e in gitlab["lab-shard"]["parallel"]["matrix"] if e["KERNEL"] == "tiny-6.12-arm64")
    assert (arm64["KERNEL_ARCH"], arm64["KERNEL_SOURCE"]) == ("arm64", "recipe")
    # the shard script reads the same variables and hands the kernel's needs to make
    shard = (ROOT / "ci" / "shard.sh").read_text()
    assert 'make ci-shard-setup KERNEL_ARCH="${KERNEL_ARCH:-x86_64}" KERNEL_SOURCE="${KERNEL_SOURCE:-debian}"' in shard


def make_dry_run(target: str, *assignments: str) -> str:
    """What make would run for a target from nothing (-B: every stamp out of date)."""
    proc = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), target, *assignments],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


CROSS = ("gcc-aarch64-linux-gnu", "gcc-riscv64-linux-gnu", "add-architecture arm64")


@pytest.mark.parametrize("target, assignments, wanted, unwanted", [
    ("run-setup", (), ("qemu-system-x86",), CROSS + ("linux-source-6.12", "ccache")),
    ("ci-shard-setup", ("KERNEL_ARCH=x86_64", "KERNEL_SOURCE=debian"), ("qemu-system-x86",),
     CROSS + ("linux-source-6.12", "chromium")),
    ("ci-shard-setup", ("KERNEL_ARCH=x86_64", "KERNEL_SOURCE=recipe"), ("linux-source-6.12", "ccache"),
     CROSS + ("chromium",)),
    ("ci-shard-setup", ("KERNEL_ARCH=arm64", "KERNEL_SOURCE=debian"),
     ("gcc-aarch64-linux-gnu", "add-architecture arm64"), ("gcc-riscv64-linux-gnu", "linux-source-6.12")),
    ("ci-shard-setup", ("KERNEL_ARCH=riscv64", "KERNEL_SOURCE=recipe"),
     ("gcc-riscv64-linux-gnu", "linux-source-6.12"), ("gcc-aarch64-linux-gnu", "add-architecture arm64")),
    ("setup", (), CROSS + ("linux-source-6.12", "ccache", "chromium"), ()),
])
def test_a_shard_installs_only_what_its_kernel_needs(target, assignments, wanted, unwanted):
    commands = make_dry_run(target, *assignments)
    for package in wanted:
        assert package in commands, (target, assignments, package)
    for package in unwanted:
        assert package not in commands, (target, assignments, package)


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
    script = "\n".join(with_scripts(merge_job["script"]))
    child = emit_gitlab([], 1)
    name = next(k for k, v in child.items() if isinstance(v, dict) and v.get("extends") == ".lab-merge")
    assert f"jobs/artifacts/$CI_DEFAULT_BRANCH/download?job={name}" in script
    assert "--baseline baseline/artifacts" in script and "artifacts/" in merge_job["artifacts"]["paths"]
