"""labctl fuzz: the draws, the digest model's predictions, the judging, the replay YAML."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import pytest
import yaml

from labctl.campaigns.coverage import digest_model
from labctl.campaigns.fuzz import MAX_LENGTH, Draw, draw_corruptions, fuzz_scenario, judge_run, scenario_yaml
from labctl.config.schema import load_scenario
from labctl.evidence.segments import Segment, SegmentTable
from labctl.kernel.providers import Kernel

DATA = Path(__file__).resolve().parents[1] / "data"


def recorded_table(kernel: str) -> SegmentTable:
    result = json.loads((DATA / kernel / "crash-intact" / "result.json").read_text())
    rows = result["evidence"]["load"]["segments"]["segments"]
    return SegmentTable(tuple(Segment(r["index"], int(r["mem"], 16), int(r["memsz"], 16),
                                      int(r["bufsz"], 16), r["role"]) for r in rows))


def kernel_with_config(tmp_path: Path, text: str | None) -> Kernel:
    config = None
    if text is not None:
        config = tmp_path / "config"
        config.write_text(text)
    return Kernel(name="k", bzimage=tmp_path / "bz", release="r", config=config)


def test_draws_are_reproducible_fit_their_segment_and_follow_its_size():
    table = recorded_table("debian-6.12")
    draws = draw_corruptions(table, 400, seed=7)
    assert draws == draw_corruptions(table, 400, seed=7)
    assert draws != draw_corruptions(table, 400, seed=8)
    sizes = {s.role: s.memsz for s in table.segments}
    for d in draws:
        assert 1 <= d.length <= MAX_LENGTH and 0 <= d.offset <= sizes[d.role] - d.length
    roles = Counter(d.role for d in draws)
    assert roles.most_common(1)[0][0] == "kernel"  # 58 of the ~62 MiB loaded
    assert [d.index for d in draws] == list(range(1, 401))


def test_a_zero_pattern_over_zeros_is_drawn_again():
    table = recorded_table("debian-6.12")
    draws = draw_corruptions(table, 200, seed=3, read=lambda address, length: bytes(length))
    assert "zero" not in {d.pattern for d in draws}
    assert "zero" in {d.pattern for d in draw_corruptions(table, 200, seed=3)}


def test_the_digest_model_reads_crash_hotplug_from_the_kernel_config(tmp_path):
    hotplug = digest_model(kernel_with_config(tmp_path, "CONFIG_CRASH_HOTPLUG=y\n"), "kexec_file_load")
    assert hotplug["elfcorehdr"][0] is False and "CRASH_HOTPLUG" in hotplug["elfcorehdr"][1]
    assert hotplug["kernel"][0] is True and hotplug["purgatory"][0] is False
    plain = digest_model(kernel_with_config(tmp_path, "# CONFIG_CRASH_HOTPLUG is not set\n"),
                         "kexec_file_load")
    assert plain["elfcorehdr"][0] is True
    unknown = digest_model(kernel_with_config(tmp_path, None), "kexec_file_load")
    assert unknown["elfcorehdr"][0] is None and "unknown" in unknown["elfcorehdr"][1]
    legacy = digest_model(kernel_with_config(tmp_path, "CONFIG_CRASH_HOTPLUG=y\n"), "kexec_load")
    assert legacy["elfcorehdr"][0] is True and legacy["backup"][0] is True


def result(outcome: str, vmcore_ok: bool | None = None) -> dict:
    verdict = {"vmcore": {"ok": vmcore_ok}} if vmcore_ok is not None else {}
    return {"outcome": outcome, "reason": "r", "evidence": {"verdict": verdict}}


def test_runs_are_judged_against_the_model(tmp_path):
    model = digest_model(kernel_with_config(tmp_path, "CONFIG_CRASH_HOTPLUG=y\n"), "kexec_file_load")
    kernel = Draw(1, "kernel", 0, 16, "flip", 0)
    header = Draw(2, "elfcorehdr", 0, 16, "flip", 0)
    purgatory = Draw(3, "purgatory", 0, 16, "flip", 0)
    assert judge_run(model, kernel, result("purgatory-refused"))["status"] == "as-predicted"
    surprise = judge_run(model, kernel, result("capture-booted", True))
    assert surprise["status"] == "surprise" and surprise["kind"] == "booted"
    assert "predicts purgatory-refused" in surprise["explanation"]
    assert judge_run(model, header, result("capture-booted", True))["status"] == "as-predicted"
    broken = judge_run(model, header, result("capture-booted", False))
    assert broken["status"] == "explained" and "vmcore" in broken["explanation"]
    assert judge_run(model, header, result("purgatory-refused"))["status"] == "surprise"
    reset = judge_run(model, purgatory, result("guest-reset"))
    assert reset["status"] == "explained" and reset["kind"] == "other"
    infra = judge_run(model, kernel, result("infra-error"))
    assert infra["status"] == "no-verdict" and infra["kind"] == "other"


def test_a_surprise_is_a_scenario_that_replays_it(tmp_path):
    model = digest_model(kernel_with_config(tmp_path, "CONFIG_CRASH_HOTPLUG=y\n"), "kexec_load")
    draw = Draw(5, "initrd", 0x1234, 77, "random", 99)
    verdict = judge_run(model, draw, result("capture-booted", True))
    path = tmp_path / "fuzz-0005.yaml"
    path.write_text(scenario_yaml("debian-6.12", "kexec_load", draw, verdict, "/a/run"))
    scenario = load_scenario(path)
    assert scenario.load.method == "kexec_load" and scenario.trigger == "sysrq"
    assert scenario.corrupt == draw.corruption()
    assert scenario.expect.outcome == "purgatory-refused"
    assert "debian-6.12" in yaml.safe_load(path.read_text())["description"]
    generated = fuzz_scenario("kexec_load", draw, model)
    assert generated.corrupt == scenario.corrupt and generated.expect.outcome == "purgatory-refused"


def test_a_stop_between_two_runs_keeps_the_next_run_from_starting():
    """The worker's handler records a stop that lands while no pair runs (after one run
    returned, before the next marked itself active): the next run raises at once, before
    booting anything (the fuzz-stop leak: a run started after the stop outlived the grace)."""
    from labctl import stopping
    from labctl.campaigns import fuzz
    from labctl.errors import Interrupted

    fuzz._worker_init()
    try:
        fuzz._worker_stop(signal.SIGTERM, None)  # no pair active: only recorded
        assert stopping.requested() == "received SIGTERM"
        with pytest.raises(Interrupted, match="SIGTERM"):
            fuzz._run_one(None, None, "kexec_file_load", None, {}, "run")  # never reaches run_pair
        assert fuzz._WORKER["active"] is False
    finally:
        stopping.reset()
        for sig in stopping.STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
