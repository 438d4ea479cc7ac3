"""Choosing the accelerator: KVM where it can run the guest, TCG otherwise.

`auto` cannot trust /dev/kvm alone: on some hosts (nested or paravirtual
KVM such as kvm_pvm) the device opens fine but a stock kernel dies with
"KVM internal error".  So `auto` tries KVM once, the run notices the failure
(QEMU's stderr or QMP status `internal-error`), the lab falls back to TCG
and remembers the answer for this host kernel and QEMU build.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Under KVM a kernel's first console line comes within a second or two; TCG is the fallback.
KVM_SILENT_SECONDS = 20.0
KVM_FAILURE_MARKERS = ("KVM internal error", "kvm run failed", "failed to initialize kvm",
                       "Could not access KVM kernel module", "failed to set MSR",
                       "kvm_buf_set_msrs")


@dataclass(frozen=True)
class Accel:
    name: str  # kvm | tcg
    reason: str

    def to_json(self) -> dict:
        return {"name": self.name, "reason": self.reason}


class KvmUnusable(Exception):
    """KVM was tried and cannot run this guest; the message says how it failed."""


def kvm_unusable(accel: str, qemu_output: str, status: Callable[[], str] | None = None,
                 silent_for: float = 0.0) -> KvmUnusable | None:
    """The one rule for "KVM cannot run this guest": the guest ran under KVM and QEMU's
    output shows KVM failing or, asked only then, QMP's run state is internal-error, or the
    booting guest has printed nothing on its console for KVM_SILENT_SECONDS (a paravirtual
    KVM such as kvm_pvm can leave a tinyconfig kernel spinning without a word or an error)."""
    if accel != "kvm":
        return None
    if line := kvm_failure(qemu_output):
        return KvmUnusable(line)
    if status is not None and status() == "internal-error":
        return KvmUnusable("QMP status internal-error")
    if silent_for > KVM_SILENT_SECONDS:
        return KvmUnusable(f"not a byte on the guest console in {silent_for:.0f} s of booting under KVM")
    return None


def kvm_failure(qemu_output: str) -> str | None:
    """The line of QEMU's output that shows KVM failing, if any."""
    for line in qemu_output.splitlines():
        if any(marker in line for marker in KVM_FAILURE_MARKERS):
            return line.strip()
    return None


def _host_key(qemu_binary: str) -> str:
    try:
        version = subprocess.run([qemu_binary, "--version"], capture_output=True,
                                 text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        version = "unknown"
    return f"{os.uname().release} | {version}"


class AccelChooser:
    """Resolves `auto|kvm|tcg` to an Accel, caching what a KVM attempt taught."""

    def __init__(self, cache_dir: Path, qemu_binary: str = "qemu-system-x86_64"):
        self.cache_file = cache_dir / "accel.json"
        self.key = _host_key(qemu_binary)

    def _cached(self) -> dict | None:
        try:
            data = json.loads(self.cache_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("host") == self.key else None

    def choose(self, requested: str) -> Accel:
        if requested == "tcg":
            return Accel("tcg", "requested in configuration")
        if requested == "kvm":
            return Accel("kvm", "requested in configuration")
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return Accel("tcg", "auto: /dev/kvm is missing or not accessible")
        cached = self._cached()
        if cached and not cached.get("kvm_usable"):
            return Accel("tcg", f"auto: KVM cannot run the guest on this host "
                                f"(learned earlier: {cached.get('reason')}; "
                                f"delete {self.cache_file} to try again)")
        return Accel("kvm", "auto: /dev/kvm is usable")

    def record_failure(self, reason: str) -> Accel:
        """Remember that KVM failed here and return the TCG fallback."""
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        self.cache_file.write_text(json.dumps({"host": self.key, "kvm_usable": False,
                                               "reason": reason}) + "\n")
        return Accel("tcg", f"auto: KVM failed to run the guest ({reason}); fell back to TCG")
