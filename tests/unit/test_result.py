"""The result model (result.py): recorded result.json files survive a round trip unchanged,
outcomes serialise as the strings they always were, and one exit-code rule."""

import json
from pathlib import Path

import pytest

from labctl.artifacts import write_json
from labctl.result import ERRORS, VERDICTS, Outcome, PairResult

DATA = Path(__file__).resolve().parents[1] / "data"
RECORDED = sorted(DATA.rglob("result.json"))


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: str(p.relative_to(DATA)))
def test_a_recorded_result_round_trips_byte_for_byte(path, tmp_path):
    """Recorded before expected_errno and expectation_reason existed, a result gains just
    those two, as null; everything it had keeps its value and its order."""
    data = json.loads(path.read_text(encoding="utf-8"))
    again = PairResult.from_json(data).to_json()
    added = {k: again[k] for k in again.keys() - data.keys()}
    assert added in ({}, {"expected_errno": None, "expectation_reason": None})
    kept = {k: v for k, v in again.items() if k not in added}
    assert kept == data and list(kept) == list(data)
    if not added:
        write_json(tmp_path / "result.json", again)
        assert (tmp_path / "result.json").read_text(encoding="utf-8") == path.read_text(encoding="utf-8")


def test_outcomes_are_the_strings_result_json_holds():
    result = PairResult("r", {"name": "s"}, {"name": "k"}, outcome=Outcome.PURGATORY_REFUSED)
    assert json.loads(json.dumps(result.to_json()))["outcome"] == "purgatory-refused"
    assert Outcome.HANG == "hang" and f"{Outcome.GUEST_RESET}" == "guest-reset"
    assert set(VERDICTS).isdisjoint(ERRORS) and Outcome.NO_VERDICT not in VERDICTS + ERRORS


@pytest.mark.parametrize("outcome, passed, code", [
    (Outcome.CAPTURE_BOOTED, True, 0), (Outcome.HANG, False, 1), (Outcome.CONFIG_ERROR, False, 2),
    (Outcome.INFRA_ERROR, False, 3), (Outcome.INTERRUPTED, False, 3), (None, False, 3),
    (Outcome.NO_VERDICT, None, 0)])
def test_one_exit_code_rule(outcome, passed, code):
    assert PairResult("r", {"name": "s"}, {"name": "k"}, outcome=outcome, passed=passed).exit_code == code


def test_the_fields_some_runs_add_come_after_the_common_ones():
    result = PairResult("r", {"name": "s"}, {"name": "k"}, extra={"mode": "console"})
    keys = list(result.to_json())
    assert keys[0] == "run_id" and keys[-1] == "mode" and "directory" not in keys


def test_a_pair_without_a_verdict_never_reads_as_a_failed_kernel():
    """config-error, infra-error and interrupted say NO VERDICT, not FAIL: FAIL is a claim
    about the kernel, and none was made."""
    for outcome in (Outcome.CONFIG_ERROR, Outcome.INFRA_ERROR, Outcome.INTERRUPTED):
        line = PairResult(run_id="r", kernel={"name": "k"}, scenario={"name": "s"}, outcome=outcome,
                          expected="capture-booted", passed=False, reason="why").summary
        assert line == f"k x s: {outcome} (expected capture-booted) -> NO VERDICT: why"
