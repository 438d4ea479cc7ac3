"""What every bisection step shares (git tree or Debian versions): running the scenario
`--runs` times on a kernel with one retry for the lab's own errors, recording each step
and saving bisect.json/bisect.md after it, and saying how far a stopped one got."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from labctl import stopping
from labctl.artifacts import write_json
from labctl.campaigns.bisect_report import Run, Step, needs_retry, render_markdown, short
from labctl.config.schema import LabConfig, Scenario
from labctl.errors import Interrupted
from labctl.guest.accel import AccelChooser
from labctl.kernel.image import Kernel
from labctl.pair.runner import run_pair
from labctl.progress import Progress, say


class Bisection:
    """The state both kinds share: the scenario, the steps so far, the report on disk."""

    def __init__(self, lab: LabConfig, scenario: Scenario, runs: int, out: Path, report: dict):
        self.lab, self.scenario, self.runs, self.out = lab, scenario, runs, out
        self.report = report
        self.steps = [Step.from_json(s) for s in report.get("steps", [])]
        self.chooser = AccelChooser(lab.cache_dir)
        self.progress = Progress("bisect")
        self.t0 = time.monotonic() - report.get("seconds", 0.0)
        self.where = "starting"

    def save(self, state: str | None = None) -> Path:
        """Write bisect.json and bisect.md as they stand (after every step)."""
        if state:
            self.report["state"] = state
        self.report["steps"] = [s.to_json() for s in self.steps]
        self.report["seconds"] = round(time.monotonic() - self.t0, 1)
        write_json(self.out / "bisect.json", self.report)
        (self.out / "bisect.md").write_text(render_markdown(self.report, self.out))
        return self.out / "bisect.json"

    def run_kernel(self, kernel: Kernel, number: int) -> list[Run]:
        """The scenario on this kernel `runs` times (stopping at the first failure: one is
        enough to call the step bad); an infrastructure error is retried once."""
        runs: list[Run] = []
        for attempt in range(1, self.runs + 1):
            first: Run | None = None
            for retry in ("", "-retry"):
                stopping.check()
                name = f"{number:02d}-{kernel.name}" + (f"-run{attempt}" if self.runs > 1 else "") + retry
                t0 = time.monotonic()
                result = run_pair(self.lab, dataclasses.replace(kernel, name=name), self.scenario,
                                  self.report["run_id"], self.chooser, quiet=True, fresh=True)
                run = Run(str(result.outcome), result.exit_code, result.reason or "",
                          str(result.directory), round(time.monotonic() - t0, 1),
                          retry_of=f"{first.artifacts}: {first.reason}" if first else "")
                if not needs_retry(run) or retry:
                    break
                first = run
                say(f"bisect: infrastructure error on {kernel.name} ({run.reason}); trying once more")
            runs.append(run)
            if run.exit_code != 0:
                break
        return runs

    def next_index(self) -> int:
        """A number no other test of this bisection used (names its artifacts; a resumed
        bisection goes on counting past the step that was interrupted)."""
        self.report["started"] = self.report.get("started", 0) + 1
        self.save()
        return self.report["started"]

    def record(self, step: Step) -> Step:
        self.steps.append(step)
        self.save()
        say(f"bisect: {step.role} {short(step.rev)} {step.verdict} ({step.reason.partition(chr(10))[0][:200]}); "
            f"build {step.build_seconds if step.build_seconds is not None else '-'} s, "
            f"run {step.run_seconds} s")
        return step

    def stopped(self, reason: str) -> int:
        """Ctrl-C (or SIGTERM): say how far the bisection got and how to go on."""
        path = self.save("interrupted")
        tested = sum(1 for s in self.steps if s.role == "step")
        say(f"bisect: {reason} while {self.where}; {len(self.steps)} revision(s) tested "
            f"({tested} bisection step(s)); the report so far: {self.out / 'bisect.md'}; "
            f"resume with: labctl bisect --resume {path}")
        return Interrupted.exit_code
