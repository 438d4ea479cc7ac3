"""A scenario's `requires:`: what a kernel must have for the scenario to apply to it.

A pair whose kernel lacks a requirement is `skipped`, with the requirement's
key and the kernel fact that is missing; labctl/evidence/applicability.py
decides it.  Only what a scenario declares here (and what its own keys imply,
see applicability.implied) can skip it, so a skip is always a reviewed claim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from labctl.config.arch import ARCHES

LOAD_METHODS = ("kexec_file_load", "kexec_load")
ASSIGNMENT = re.compile(r"^CONFIG_[A-Z0-9_]+=\S+$")


def _true_only(value: Any) -> str | None:
    return None if value is True else "only `true` means something here; drop the key otherwise"


def _config_assignment(value: Any) -> str | None:
    return None if ASSIGNMENT.match(value) else "is not of the form CONFIG_NAME=value (e.g. CONFIG_SMP=y)"


def _as_list(value: Any) -> Any:
    """`arch: x86_64` is short for `arch: [x86_64]`."""
    return [value] if isinstance(value, str) else value


def requires_schema(field: Any) -> dict:
    """The `requires:` mapping, in schema.py's Field terms (passed in: schema imports this)."""
    return {
        # the kernel brings up more than one CPU (CONFIG_SMP=y)
        "smp": field(bool, default=None, check=_true_only),
        # the kernel can online a hot-added DIMM (CONFIG_MEMORY_HOTPLUG=y)
        "memory_hotplug": field(bool, default=None, check=_true_only),
        # the load method's purgatory checks the segment digests on the kernel's architecture
        "purgatory": field(bool, default=None, check=_true_only),
        "config": field(list, default=[], coerce=_as_list,
                        items=field(str, check=_config_assignment)),
        "arch": field(list, default=[], coerce=_as_list, items=field(str, choices=tuple(ARCHES))),
        "load_method": field(str, default=None, choices=LOAD_METHODS),
    }


@dataclass(frozen=True)
class Requires:
    """What a scenario declares it needs (None / empty: nothing declared)."""

    smp: bool | None = None
    memory_hotplug: bool | None = None
    purgatory: bool | None = None
    config: tuple[str, ...] = ()
    arch: tuple[str, ...] = ()
    load_method: str | None = None

    @classmethod
    def from_raw(cls, raw: dict) -> Requires:
        return cls(smp=raw["smp"], memory_hotplug=raw["memory_hotplug"], purgatory=raw["purgatory"],
                   config=tuple(raw["config"]), arch=tuple(raw["arch"]), load_method=raw["load_method"])
