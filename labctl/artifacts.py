"""Where a run's evidence goes: artifacts/<run-id>/<kernel>/<scenario>/.

A run id is a UTC timestamp plus a random suffix, so two runs started in the
same second (two terminals, two CI shards) never share or overwrite a
directory.  The directory is checked for writability and free space before
any guest starts, so a full disk is a clear error, not a lost log.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path

from labctl.errors import ConfigError, InfraError

MIN_FREE_BYTES = 64 << 20
UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def safe_component(name: str) -> str:
    """A kernel or scenario name as one safe path component."""
    cleaned = UNSAFE.sub("_", name).lstrip(".")
    return cleaned or "_"


def check_writable(directory: Path, min_free: int = MIN_FREE_BYTES) -> None:
    """Fail early, before QEMU starts, if results could not be kept."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        raise InfraError(f"artifacts directory {directory} is not writable ({exc.strerror}); "
                         "fix its permissions or set artifacts_dir in lab.yaml") from None
    free = shutil.disk_usage(directory).free
    if free < min_free:
        raise InfraError(f"artifacts directory {directory} has only {free >> 20} MiB free "
                         f"(need {min_free >> 20} MiB); free some space or move artifacts_dir")


def pair_dir(root: Path, run_id: str, kernel: str, scenario: str) -> Path:
    """Create and return the directory of one kernel x scenario pair."""
    path = root / run_id / safe_component(kernel) / safe_component(scenario)
    try:
        path.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise ConfigError(f"{path} already exists and results are never overwritten: "
                          "use another --run-id") from None
    return path


def write_json(path: Path, data: dict) -> None:
    """Write atomically, so a reader never sees half a result."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
