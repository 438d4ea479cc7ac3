"""Snapshots end to end: forked runs answer what fresh ones do, and every way a snapshot
can fail (broken file, Ctrl-C while saving or restoring, a full /dev/shm) ends in a fresh
boot or a clean stop that says so, with no snapshot, RAM copy or QEMU left behind.

The whole catalogue, fresh vs forked on both Debian kernels, is the `full` test at the end
(`make test-full`, minutes); CI runs the small version above it.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_faults import PROMPT_EXIT, LiveRun, assert_gone

from conftest import ROOT, labctl, shared_cache

pytestmark = pytest.mark.e2e

KERNEL = "debian-6.12"
LOADED = ["crash-corrupt", "crash-intact", "corrupt-elfcorehdr", "unload-then-panic"]
BOOTED = ["load-garbage"]  # the load is the question: forks from the booted guest, loads itself
COMPARED = LOADED + BOOTED


@pytest.fixture(scope="module")
def fresh_and_forked():
    fresh = labctl("run", *COMPARED, "--kernel", KERNEL, "--fresh")
    forked = labctl("run", *COMPARED, "--kernel", KERNEL)
    return fresh, forked


def test_forked_runs_reach_the_same_outcomes_as_fresh_ones(fresh_and_forked):
    fresh, forked = fresh_and_forked
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert forked.returncode == 0, forked.stdout + forked.stderr
    outcomes = [{name: r["outcome"] for name, r in run.results.items()} for run in (fresh, forked)]
    assert outcomes[0] == outcomes[1] and set(outcomes[0]) == set(COMPARED)
    assert {r["evidence"]["snapshot"]["fresh_boot"] for r in fresh.results.values()} == \
        {"--fresh (or a caller that boots fresh)"}
    for name in COMPARED:  # the same kinds of evidence back each verdict (dump check, CPUs...)
        verdicts = [set(run.results[name]["evidence"]["verdict"]) for run in (fresh, forked)]
        assert verdicts[0] == verdicts[1], name


def test_forked_results_carry_the_snapshots_boot_and_load_evidence(fresh_and_forked):
    _, forked = fresh_and_forked
    keys = {forked.results[name]["evidence"]["snapshot"]["key"] for name in LOADED}
    assert len(keys) == 1, keys  # one snapshot: same kernel, machine and load step
    key = keys.pop()
    for result in (forked.results[name] for name in LOADED):
        evidence = result["evidence"]
        note = f"restored from snapshot {key}"
        assert evidence["snapshot"]["note"] == evidence["primary"]["source"] == \
            evidence["load"]["source"] == note
        assert evidence["primary"]["release"] == result["kernel"]["release"]
        roles = {s["role"] for s in evidence["load"]["segments"]["segments"]}
        assert {"kernel", "initrd", "purgatory", "elfcorehdr", "boot_params"} == roles
        assert 0 < result["timings"]["restore"] < result["timings"]["total"]
        assert "boot" not in result["timings"]  # this run did not boot
        directory = result["_dir"]
        assert "Linux version" in (directory / "snapshot-serial.log").read_text()
        assert "> load " in (directory / "snapshot-control.log").read_text()
        assert "> load " not in (directory / "control.log").read_text()
    corrupted = forked.results["crash-corrupt"]["evidence"]["corruption"]
    assert corrupted["verified"] and corrupted["segment"]["role"] == "kernel"
    assert "restoring snapshot" in forked.stderr and "booting the primary kernel" not in \
        forked.stderr.split("restoring snapshot")[-1]


def test_a_scenario_whose_load_is_the_question_forks_from_the_booted_guest_and_loads_itself(
        fresh_and_forked):
    _, forked = fresh_and_forked
    loaded_key = forked.results["crash-corrupt"]["evidence"]["snapshot"]["key"]
    result = forked.results["load-garbage"]
    snapshot, load = result["evidence"]["snapshot"], result["evidence"]["load"]
    assert snapshot["stage"] == "booted" and snapshot["key"] != loaded_key
    assert "garbage image" in snapshot["loads_on_this_run"]
    assert result["evidence"]["primary"]["source"] == snapshot["note"]
    assert "source" not in load and load["errno"] == 8  # this run's own load: ENOEXEC
    assert result["evidence"]["recovery"]["outcome"] == "capture-booted"
    directory = result["_dir"]
    assert "> load " not in (directory / "snapshot-control.log").read_text()  # saved before any load
    assert "> load " in (directory / "control.log").read_text()
    assert "boot" not in result["timings"]


# ------------------------------------------------------------ the whole catalogue

@pytest.mark.full
def test_the_whole_catalogue_forked_reaches_the_outcomes_of_fresh_boots_on_both_debian_kernels(tmp_path):
    """Every scenario on both Debian kernels, --fresh and forked (snapshots made in the run,
    in a cache of its own): the same outcome for every pair."""
    lab, _ = make_private_lab(tmp_path)
    # userland: debian boots its own root disk and never forks (tests/e2e/test_distro_stack.py)
    names = [p.stem for p in sorted((ROOT / "scenarios").glob("*.yaml"))
             if yaml.safe_load(p.read_text()).get("userland", "lab") == "lab"]
    runs = {}
    for mode in ("fresh", "forked"):
        run = labctl("--lab", str(lab), "matrix", "--kernels", "debian-6.12", "debian-6.1", "-j", "2",
                     "--scenarios", *names,
                     "--run-id", mode, *(["--fresh"] if mode == "fresh" else []))
        assert run.returncode in (0, 1), run.stdout + run.stderr  # a wrong verdict is compared below
        runs[mode] = {f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())["outcome"]
                      for p in (tmp_path / "artifacts" / mode).glob("*/*/result.json")}
    assert len(runs["fresh"]) == len(runs["forked"]) == 2 * len(names)
    differ = {k: (runs["fresh"][k], runs["forked"].get(k)) for k in runs["fresh"]
              if runs["fresh"][k] != runs["forked"].get(k)}
    assert not differ, differ


# ------------------------------------------------------------ a lab with its own cache

@pytest.fixture
def private_lab(tmp_path):
    return make_private_lab(tmp_path)


def make_private_lab(tmp_path: Path) -> tuple[Path, Path]:
    """lab.yaml with a cache of its own (the Debian kernels and the accelerator verdict
    linked from the shared one), so its snapshots can be broken without touching anyone's;
    returns it and its snapshot store."""
    shared = shared_cache()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "kernels").symlink_to(shared / "kernels")
    if (shared / "accel.json").exists():
        (cache / "accel.json").write_bytes((shared / "accel.json").read_bytes())
    data = yaml.safe_load((ROOT / "lab.yaml").read_text())
    data.update(cache_dir=str(cache), artifacts_dir=str(tmp_path / "artifacts"))
    (tmp_path / "scenarios").symlink_to(ROOT / "scenarios")
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump(data))
    return tmp_path / "lab.yaml", cache / "snapshots"


def snapshot_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


def test_a_snapshot_is_made_once_kept_private_and_a_broken_one_falls_back_to_a_fresh_boot(
        no_leaks, private_lab):
    lab, root = private_lab
    first = labctl("--lab", str(lab), "run", "crash-corrupt", "--kernel", KERNEL)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "creating snapshot" in first.stderr and "saving snapshot" in first.stderr
    [snap] = snapshot_dirs(root)
    assert stat.S_IMODE(snap.stat().st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in snap.iterdir()} == {
        name: 0o600 for name in ("ram", "state", "snapshot.json", "serial.log", "control.log", "qemu.log")}
    meta = json.loads((snap / "snapshot.json").read_text())
    assert meta["save"]["state_bytes"] < 2 << 20 and meta["load"]["table"]["segments"]
    assert os.stat(snap / "ram").st_blocks * 512 < (meta["save"]["ram_bytes_guest_touched"] + (1 << 20))

    (snap / "state").write_bytes(b"\0" * 4096)  # a corrupt snapshot file
    broken = labctl("--lab", str(lab), "run", "crash-corrupt", "--kernel", KERNEL)
    assert broken.returncode == 0, broken.stdout + broken.stderr
    result = broken.results["crash-corrupt"]
    assert result["outcome"] == "purgatory-refused" and result["passed"]
    reason = result["evidence"]["snapshot"]["fresh_boot"]
    assert reason.startswith("fell back to a fresh boot: snapshot ") and \
        "device state file does not match its recorded digest" in reason
    assert "falling back to a fresh boot" in broken.stderr and "booting the primary kernel" in broken.stderr
    assert result["timings"]["boot"] > 0 and not snap.exists()  # dropped


def test_a_state_qemu_rejects_falls_back_to_a_fresh_boot(no_leaks, private_lab):
    """Past the lab's own checks (digest recorded over the broken file): QEMU itself refuses."""
    lab, root = private_lab
    assert labctl("--lab", str(lab), "run", "crash-corrupt", "--kernel", KERNEL).returncode == 0
    [snap] = snapshot_dirs(root)
    state = bytearray((snap / "state").read_bytes())
    state[64:4096] = b"\xa5" * (4096 - 64)
    (snap / "state").write_bytes(bytes(state))
    meta = json.loads((snap / "snapshot.json").read_text())
    meta["state_sha256"] = __import__("hashlib").sha256(bytes(state)).hexdigest()
    (snap / "snapshot.json").write_text(json.dumps(meta))
    run = labctl("--lab", str(lab), "run", "crash-corrupt", "--kernel", KERNEL)
    assert run.returncode == 0, run.stdout + run.stderr
    result = run.results["crash-corrupt"]
    assert result["outcome"] == "purgatory-refused"
    assert result["evidence"]["snapshot"]["fresh_boot"].startswith("fell back to a fresh boot: snapshot ")
    assert result["attempts"] and "snapshot" in result["attempts"][0]
    assert (result["_dir"] / "snapshot-attempt-qemu.log").exists()


@pytest.mark.parametrize("text,phases,delay", [
    # the saving phase is short (tens of ms of QMP, then the RAM copy): several delays
    # land the signal inside qemu.qmp's event loop, between commands and in the copy
    ("saving snapshot", {"saving a snapshot"}, 0.0),
    ("saving snapshot", {"saving a snapshot"}, 0.02),
    ("saving snapshot", {"saving a snapshot"}, 0.1),
    ("restoring snapshot", {"restoring", "corrupting", "panicking", "observing"}, 0.0),
], ids=["saving-0ms", "saving-20ms", "saving-100ms", "restoring"])
def test_ctrl_c_while_saving_or_restoring_leaves_no_snapshot_or_ram_copy(no_leaks, private_lab,
                                                                          text, phases, delay):
    lab, root = private_lab
    run = LiveRun("crash-corrupt", "--kernel", KERNEL, lab=lab, fresh=False)
    run.wait_for(text)
    pid, rundir = run.qemu()
    time.sleep(delay)
    os.kill(run.proc.pid, signal.SIGINT)
    code, stdout, took = run.finish()
    assert code == 130 and took < PROMPT_EXIT, run.stderr
    result = run.result(stdout)
    assert result["outcome"] == "interrupted" and result["phase"] in phases, result
    assert_gone(pid, rundir)
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]  # no half-built snapshot
    if text == "saving snapshot":
        assert snapshot_dirs(root) == []


def test_a_full_dev_shm_is_an_infra_error_that_leaves_nothing(no_leaks, private_lab):
    """/dev/shm too small for the RAM copy (a tmpfs of its own, in a mount namespace of
    this run only): the restore fails, the fresh boot cannot hold the guest either, and
    the run says so as an infrastructure error; the tmpfs is empty afterwards."""
    lab, root = private_lab
    assert labctl("--lab", str(lab), "run", "crash-corrupt", "--kernel", KERNEL).returncode == 0
    driver = (
        "import os, subprocess, sys\n"
        "subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=100m', 'tmpfs', '/dev/shm'], check=True)\n"
        f"run = subprocess.run([sys.executable, '-m', 'labctl', '--lab', {str(lab)!r}, 'run', "
        f"'crash-corrupt', '--kernel', {KERNEL!r}], cwd={str(ROOT)!r}, capture_output=True, text=True)\n"
        "print(run.returncode); print(sorted(os.listdir('/dev/shm'))); print(run.stdout)\n"
        "print(run.stderr, file=sys.stderr)\n")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "--",
                           sys.executable, "-c", driver], capture_output=True, text=True, timeout=300)
    code, left, *stdout = proc.stdout.splitlines()
    assert code == "3" and left == "[]", proc.stdout + proc.stderr
    assert "No space left on device; falling back to a fresh boot" in proc.stderr
    artifacts = Path(next(line for line in stdout if line.startswith("  artifacts: ")).split(": ", 1)[1])
    result = json.loads((artifacts / "result.json").read_text())
    assert result["outcome"] == "infra-error" and "SIGBUS" in result["reason"], result["reason"]
    assert len(snapshot_dirs(root)) == 1  # the snapshot itself is fine and kept


# ------------------------------------------------------------ labctl fuzz

def fuzz_output(run) -> Path:
    return Path(run.stdout.strip().splitlines()[-1].split("written: ")[1].split(" and ")[0]).parent


def test_fuzz_on_debian_6_12_agrees_with_the_digest_model(no_leaks, tmp_path):
    run = labctl("fuzz", "--kernel", KERNEL, "--runs", "4", "--seed", "12", "-j", "2",
                 "--artifacts", str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 runs forked from snapshot" in run.stdout and "0 surprise(s)" in run.stdout
    report = json.loads((fuzz_output(run) / "fuzz.json").read_text())
    assert len(report["rows"]) == 4 and report["model"]["elfcorehdr"][0] is False  # CRASH_HOTPLUG=y
    for row in report["rows"]:
        result = json.loads((Path(row["directory"]) / "result.json").read_text())
        assert result["evidence"]["snapshot"]["key"] == report["snapshot"]
        assert result["outcome"] == row["verdict"]["outcome"]
        assert row["verdict"]["status"] in ("as-predicted", "explained")
        corruption = result["evidence"]["corruption"]
        assert corruption["verified"] and corruption["segment"]["role"] == row["draw"]["role"]
        assert int(corruption["offset"], 16) == row["draw"]["offset"]


def test_fuzz_on_the_negative_control_saves_surprises_that_replay(no_leaks, tmp_path):
    """tiny-6.12-no-digest's purgatory ignores the digest: hashed bytes are not refused."""
    kernel = "tiny-6.12-no-digest"
    run = labctl("fuzz", "--kernel", kernel, "--runs", "2", "--seed", "3", "-j", "2",
                 "--artifacts", str(tmp_path))
    assert run.returncode == 1, run.stdout + run.stderr
    surprises = sorted((fuzz_output(run) / "surprises").glob("fuzz-*.yaml"))
    assert surprises and f"replay: labctl run {surprises[0]} --kernel {kernel}" in run.stdout
    replay = labctl("run", str(surprises[0]), "--kernel", kernel, "--artifacts", str(tmp_path))
    assert replay.returncode == 1, replay.stdout + replay.stderr
    result = next(iter(replay.results.values()))
    assert result["expected"] == "purgatory-refused" and result["outcome"] != "purgatory-refused"


def test_fuzz_stopped_midway_stops_every_guest_and_keeps_a_partial_summary(no_leaks, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "labctl", "fuzz", "--kernel", KERNEL, "--runs", "20",
                             "--seed", "4", "-j", "2", "--artifacts", str(tmp_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "[1/20]" not in seen:  # the first run finished, the next two are running
        line = proc.stderr.readline()
        assert line, seen
        seen += line
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, seen + stderr
    assert "fuzz interrupted after" in stderr
    report = json.loads(next(tmp_path.glob("*/fuzz/fuzz.json")).read_text())
    assert 1 <= len(report["rows"]) < 20
    outcomes = [json.loads(p.read_text())["outcome"] for p in tmp_path.glob(f"*/{KERNEL}/fuzz-*/result.json")]
    assert outcomes.count("interrupted") <= 2 and len(outcomes) <= len(report["rows"]) + 2  # the two running
    assert len(outcomes) < 20  # nothing queued was started after the signal
