"""Recorded transcripts from real runs (tests/data/<kernel>/<scenario>/), for unit tests."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

DATA = Path(__file__).parent / "data"
KERNELS = ("debian-6.12", "debian-6.1")
GOLDEN = DATA / "golden"
LINE = re.compile(r"^\[\s*[\d.]+\] < (.*)$")


def control_messages(kernel: str, scenario: str) -> list[dict]:
    """The guest's messages from a recorded control.log, in order."""
    text = (DATA / kernel / scenario / "control.log").read_text()
    return [json.loads(m[1]) for line in text.splitlines() if (m := LINE.match(line))]


def message(kernel: str, scenario: str, kind: str, **match) -> dict:
    return next(m for m in control_messages(kernel, scenario)
                if m["type"] == kind and all(m.get(k) == v for k, v in match.items()))


def result(kernel: str, scenario: str) -> dict:
    return json.loads((DATA / kernel / scenario / "result.json").read_text())


def registers(kernel: str, scenario: str) -> str:
    return (DATA / kernel / scenario / "registers.txt").read_text()


def golden(name: str, text: str) -> None:
    """Compare with tests/data/golden/NAME; LAB_UPDATE_GOLDEN=1 rewrites it (review the diff)."""
    path = GOLDEN / name
    if os.environ.get("LAB_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} missing: run with LAB_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"{name} changed; if intended: LAB_UPDATE_GOLDEN=1 and review"
