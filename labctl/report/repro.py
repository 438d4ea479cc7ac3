"""From a red cell to a shell: the commands that reproduce one pair on a person's machine.

Every failing or unexpected pair in summary.md, report.html and junit.xml carries
them: `labctl run` for the whole pair, `labctl console` stopped before the trigger
(after the corruption where there is one) to look at the guest, and the pair's
serial.log.  Built from result.json alone, like the rest of the reports.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

SCENARIOS_DIR = "scenarios"


@dataclass(frozen=True)
class Repro:
    run: str
    console: str
    serial: str | None  # relative to the report, when the pair has one

    def lines(self) -> list[str]:
        return [f"reproduce: {self.run}", f"inspect before the trigger: {self.console}"] + \
            ([f"serial log: {self.serial}"] if self.serial else [])


def scenario_arg(scenario: dict) -> str:
    """The scenario's name when it is one of a checkout's scenarios/, else its path."""
    name, path = scenario.get("name", ""), Path(str(scenario.get("path") or ""))
    if not scenario.get("path") or (path.parent.name == SCENARIOS_DIR and path.stem == name):
        return name
    return str(path)


def kernel_args(kernel: dict, console: bool = False) -> list[str]:
    """--kernel NAME for a catalogue kernel; a kernel given by path is named by that path
    (and, for `labctl run`, its architecture when it is not the host's)."""
    name, image = kernel.get("name", ""), kernel.get("kexec_image") or kernel.get("bzimage")
    if kernel.get("package") or kernel.get("recipe") or not image or Path(image).name != name:
        return ["--kernel", name]
    arch = kernel.get("arch")
    return ["--kernel", image] + (["--arch", arch] if arch not in (None, "x86_64") and not console else [])


def repro(result: dict, serial: str | None) -> Repro:
    scenario = scenario_arg(result.get("scenario") or {})
    kernel = result.get("kernel") or {}
    corrupts = (result.get("scenario") or {}).get("corrupt") or "corruption" in (result.get("evidence") or {})
    stop_at = "corrupted" if corrupts else "loaded"
    run = shlex.join(["labctl", "run", scenario, *kernel_args(kernel)])
    console = shlex.join(["labctl", "console", scenario, *kernel_args(kernel, console=True),
                          "--stop-at", stop_at])
    return Repro(run, console, serial)
