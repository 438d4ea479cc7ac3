"""The load-time half of `labctl coverage`: which images does this kernel accept?

Before purgatory's digest there is the load itself: kexec_file_load probes the
image and, with CONFIG_KEXEC_SIG, checks its signature; under lockdown it
refuses what does not verify, and kexec_load(2) altogether.  For each kernel,
each image kind (kernel/load_images.py, signing.py) is loaded on a fresh guest, as booted
and with lockdown=integrity, and the table says `loads` or the errno.  A
KEXEC_SIG_FORCE kernel is its own column set: force is a build option, so its
kernel's table is the SIG_FORCE mode.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

from labctl.config.schema import Expectation, LabConfig, LoadStep, Scenario
from labctl.guest.accel import AccelChooser
from labctl.kernel.load_images import KERNEL_IMAGES
from labctl.kernel.providers import Kernel
from labctl.pair.runner import run_pair
from labctl.result import Outcome

MODES = {"as booted": "", "lockdown=integrity": "lockdown=integrity"}  # column -> boot words
# rows: every image through kexec_file_load, and the default image through kexec_load
ROWS = tuple(("kexec_file_load", image) for image in KERNEL_IMAGES) + (("kexec_load", "default"),)


@dataclass(frozen=True)
class LoadCell:
    kernel: str
    method: str
    image: str
    mode: str
    outcome: str | None
    errno: str | None
    reason: str
    directory: str
    kernel_log: tuple[str, ...] = ()  # the kernel's lockdown / signature lines

    def text(self) -> str:
        if self.outcome == Outcome.LOAD_ACCEPTED:
            return "loads"
        if self.outcome == Outcome.LOAD_REJECTED:
            return self.errno or "refused (no errno)"
        return f"**{self.outcome}**"  # the lab broke or the guest did: not a finding

    def to_json(self) -> dict:
        return {**self.__dict__, "kernel_log": list(self.kernel_log)}


def load_scenario(method: str, image: str, mode: str) -> Scenario:
    """Boot (with the mode's words), load the image, stop: trigger none."""
    name = f"load-{method.replace('_', '-')}-{image}-{'lockdown' if MODES[mode] else 'booted'}"
    return Scenario(name=name, path=Path(f"<coverage:{name}>"),
                    description=f"{method} of the {image} image, {mode}",
                    load=LoadStep(method=method, kernel=image), corrupt=None, trigger="none",
                    expect=Expectation(Outcome.LOAD_ACCEPTED), boot_cmdline=MODES[mode])


def run_load_cell(lab: LabConfig, kernel: Kernel, method: str, image: str, mode: str,
                  run_id: str) -> LoadCell:
    """One load on a fresh guest (runs in a worker process)."""
    result = run_pair(lab, kernel, load_scenario(method, image, mode), run_id,
                      AccelChooser(lab.cache_dir), quiet=True)
    load = result.evidence.get("load") or {}
    number = load.get("errno") if result.outcome == Outcome.LOAD_REJECTED else None
    return LoadCell(kernel.name, method, image, mode, result.outcome,
                    errno.errorcode.get(number) if number else None, result.reason or "",
                    str(result.directory), tuple(load.get("kernel_log") or ()))


def failed_cell(item: tuple, why: str, directory: str) -> LoadCell:
    kernel, method, image, mode = item
    return LoadCell(kernel.name, method, image, mode, "infra-error", None, why, directory)


def markdown(cells: list[LoadCell], force: dict[str, bool]) -> str:
    """Per kernel: image kinds as rows, modes as columns; force[kernel]: KEXEC_SIG_FORCE=y."""
    lines = ["# Load time: which images does the kernel accept?", "",
             "`loads` = the load succeeded; an errno = the syscall refused it (kexec_load: "
             "kexec-tools' words mapped back to the errno).", ""]
    index = {(c.kernel, c.method, c.image, c.mode): c for c in cells}
    for kernel in dict.fromkeys(c.kernel for c in cells):
        note = " (KEXEC_SIG_FORCE=y)" if force.get(kernel) else ""
        lines += [f"## {kernel}{note}", "", "| image | " + " | ".join(MODES) + " |",
                  "|---|" + "---|" * len(MODES)]
        for method, image in ROWS:
            row = [index[key].text() if (key := (kernel, method, image, m)) in index else ""
                   for m in MODES]
            if any(row):
                label = image if method == "kexec_file_load" else f"{image} via kexec_load"
                lines.append(f"| {label} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)
