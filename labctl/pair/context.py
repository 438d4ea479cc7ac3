"""What the pair's helpers (snapshot.py, distro.py, reboot.py) may use of the pair being run.

runner.PairRun drives them and they call back into it (its boot and load steps, its
evidence).  They see it through this Protocol, not through runner (which imports them):
the package order stays one-way and mypy checks PairRun against what they use where
runner passes itself in.
"""

from __future__ import annotations

from typing import Protocol

from labctl.config.arch import Arch
from labctl.config.schema import LabConfig, Scenario
from labctl.guest.assets import GuestAssets
from labctl.kernel.image import Kernel
from labctl.pair.steps import Loaded, Session
from labctl.progress import Progress


class PairContext(Protocol):
    """The pair as its helpers see it: what it runs, where it writes evidence, its steps."""

    lab: LabConfig
    kernel: Kernel
    scenario: Scenario
    progress: Progress
    evidence: dict  # result.json's evidence: the helpers add their parts
    session: Session | None  # the live session; its phase names an interruption
    save_vmcore: bool
    assets: GuestAssets | None  # the run's initramfs images, once built

    @property
    def arch(self) -> Arch: ...

    @property
    def loaded_kernel(self) -> Kernel: ...

    def step_boot(self, session: Session) -> dict: ...

    def step_load(self, session: Session) -> Loaded: ...
