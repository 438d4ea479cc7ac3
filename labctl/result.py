"""The result model: how a pair can end (Outcome) and its result.json (PairResult).

`labctl run`, `labctl console`, `labctl matrix` and `labctl coverage` all read
and write a pair's result through PairResult, so result.json has one shape and
one exit-code rule.  Outcome is a StrEnum: its members compare equal to, format
as and serialise to the same strings result.json has always held.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from labctl.artifacts import write_json
from labctl.errors import EXIT_FAILED, EXIT_INFRA, EXIT_PASSED, EXIT_USAGE


class Outcome(StrEnum):
    """How a pair ended: a verdict on the kernel (verdict.py says on what evidence), or
    why there is none."""

    CAPTURE_BOOTED = "capture-booted"
    PURGATORY_REFUSED = "purgatory-refused"
    LOAD_REJECTED = "load-rejected"
    LOAD_ACCEPTED = "load-accepted"
    PANIC_HALTED = "panic-halted"
    CAPTURE_PANICKED = "capture-panicked"
    GUEST_RESET = "guest-reset"
    HANG = "hang"
    DUMP_MISMATCH = "dump-mismatch"
    CAPTURE_HALTED = "capture-halted"
    CAPTURE_DAMAGED = "capture-damaged"
    REBOOTED = "rebooted"  # a kexec reboot's new kernel said hello with the run's token
    NO_VERDICT = "no-verdict"  # a bounded look (labctl console) ended before any evidence
    # the scenario does not apply to this kernel: it lacks what the scenario needs (its
    # `requires:` or what its keys imply); the reason names the key and the kernel fact
    SKIPPED = "skipped"
    # the kernel's config file said it has what the scenario needs; the running kernel does not
    REQUIREMENT_UNMET = "requirement-unmet"
    INFRA_ERROR = "infra-error"
    CONFIG_ERROR = "config-error"
    INTERRUPTED = "interrupted"


# What a scenario may expect: the outcomes that are findings about the kernel.
VERDICTS = (Outcome.CAPTURE_BOOTED, Outcome.PURGATORY_REFUSED, Outcome.LOAD_REJECTED,
            Outcome.LOAD_ACCEPTED, Outcome.PANIC_HALTED, Outcome.CAPTURE_PANICKED,
            Outcome.GUEST_RESET, Outcome.HANG, Outcome.DUMP_MISMATCH, Outcome.CAPTURE_HALTED,
            Outcome.CAPTURE_DAMAGED, Outcome.REBOOTED)
# No verdict was reached: the lab, the input or the person stopped the pair.
ERRORS = (Outcome.INFRA_ERROR, Outcome.CONFIG_ERROR, Outcome.INTERRUPTED)
NOT_JSON = {"extra", "directory"}
LOGS = {"serial_log": "serial.log", "control_log": "control.log", "qemu_log": "qemu.log"}


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class PairResult:
    """One kernel x scenario pair's result.json.  The named fields come first, in this
    order; `extra` holds the fields only some runs have (mode, stop_at, phase, stage,
    ended_by, expected_failure, unexpected_pass, matrix), in the order they were set."""

    run_id: str
    scenario: dict
    kernel: dict
    accelerator: dict | None = None
    expected: str | None = None
    expected_errno: str | None = None
    expectation_reason: str | None = None
    outcome: str | None = None
    passed: bool | None = False
    reason: str | None = None
    evidence: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    attempts: list = field(default_factory=list)
    started_at: str = field(default_factory=utc_now)
    artifacts: dict = field(default_factory=lambda: dict(LOGS))
    extra: dict = field(default_factory=dict)
    directory: Path | None = None  # where result.json is (not part of it)

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in NOT_JSON}
        return {**data, **self.extra}

    @classmethod
    def from_json(cls, data: dict) -> PairResult:
        """A result.json as written by any version of the lab (unknown keys go to extra)."""
        known = {f.name for f in fields(cls)} - NOT_JSON
        result = cls(**{k: v for k, v in data.items() if k in known})
        result.extra = {k: v for k, v in data.items() if k not in known}
        return result

    @property
    def exit_code(self) -> int:
        """0 passed (or skipped, or a console session that reached no verdict), 1 an
        expectation failed, 2 a configuration error, 3 anything else without a verdict."""
        if self.outcome == Outcome.CONFIG_ERROR:
            return EXIT_USAGE
        if self.outcome in (Outcome.NO_VERDICT, Outcome.SKIPPED):
            return EXIT_PASSED
        if self.outcome is None or self.outcome in ERRORS:
            return EXIT_INFRA
        return EXIT_PASSED if self.passed else EXIT_FAILED

    @property
    def summary(self) -> str:
        """The one line `labctl run` prints for the pair."""
        verdict = "PASS" if self.passed else "FAIL"
        if self.outcome in ERRORS:  # no verdict on the kernel: the lab, the input or a person stopped it
            verdict = "NO VERDICT"
        if self.outcome == Outcome.SKIPPED:
            return f"{self.kernel['name']} x {self.scenario['name']}: SKIPPED: {self.reason}"
        if why := self.extra.get("expected_failure"):
            verdict += f" (expected failure: {why})"
        elif why := self.extra.get("unexpected_pass"):
            verdict += f" (UNEXPECTED PASS: listed in expect_fail: {why})"
        return (f"{self.kernel['name']} x {self.scenario['name']}: {self.outcome} "
                f"(expected {self.expected}) -> {verdict}: {self.reason}")

    def attach(self, out: Path, attachments: dict[str, str]) -> None:
        """Write a finding's text attachments next to result.json and list them."""
        for name, text in attachments.items():
            (out / name).write_text(text, encoding="utf-8")
            self.artifacts[name.split(".")[0]] = name

    def write(self) -> None:
        """result.json in its directory, atomically."""
        assert self.directory is not None, "a PairResult is written where its pair ran"
        write_json(self.directory / "result.json", self.to_json())
