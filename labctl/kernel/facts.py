"""Kernel options an expectation depends on, learned from the kernel that runs.

A scenario's expectation may depend on a kernel option (`when: config:
CONFIG_CRASH_HOTPLUG=y`).  The answer comes, in this order, from:

- the running kernel's /proc/config.gz (CONFIG_IKCONFIG_PROC), every option;
- files the running kernel creates only with the option, read by the primary
  helper (its hello's "sysfs"): kernel/ksysfs.c creates
  /sys/kernel/crash_elfcorehdr_size only under CONFIG_VMCORE_INFO &&
  CONFIG_CRASH_HOTPLUG (and /sys/kernel/vmcoreinfo under CONFIG_VMCORE_INFO
  alone), drivers/base/cpu.c /sys/devices/system/cpu/crash_hotplug under
  CONFIG_CRASH_HOTPLUG; and whether kexec_file_load(2) exists (CONFIG_KEXEC_FILE:
  ENOSYS without it, from a call with flags no kernel accepts);
- the config file found beside the image (a Debian package's boot/config-*,
  a recipe build's .config).

What none of them tells stays unknown, and an expectation that needs it is not
guessed: the run ends as a configuration-class result naming the option.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass

from labctl.config.schema import Expectation, Expected
from labctl.kernel.image import parse_config


@dataclass(frozen=True)
class Fact:
    """One option's value ("y", "m", "n", a string) and where the lab learned it."""

    value: str
    source: str

    def to_json(self) -> dict:
        return {"value": self.value, "source": self.source}


class UnknownFact(Exception):
    """An expectation depends on an option that nothing told the lab."""

    def __init__(self, symbol: str):
        super().__init__(f"expectation unknown: depends on {symbol}, not known for this kernel")
        self.symbol = symbol


def needed_symbols(expect: Expectation) -> list[str]:
    """The options the expectation's `when: config:` cases test."""
    return [case.config.partition("=")[0] for case in expect.cases if case.config]


def from_sysfs(sysfs: dict | None) -> dict[str, Fact]:
    """Options the primary helper's sysfs probe tells (see the module doc)."""
    if not sysfs or not sysfs.get("present"):
        return {}
    facts = {}
    if sysfs.get("crash_elfcorehdr_size") is not None:
        facts["CONFIG_CRASH_HOTPLUG"] = Fact("y", "running kernel: /sys/kernel/crash_elfcorehdr_size "
                                                  "exists (kernel/ksysfs.c, CONFIG_CRASH_HOTPLUG)")
    elif sysfs.get("crash_hotplug") is not None:
        facts["CONFIG_CRASH_HOTPLUG"] = Fact("y", "running kernel: /sys/devices/system/cpu/"
                                                  "crash_hotplug exists (drivers/base/cpu.c)")
    elif sysfs.get("vmcoreinfo") is not None:
        facts["CONFIG_CRASH_HOTPLUG"] = Fact("n", "running kernel: /sys/kernel/vmcoreinfo exists "
                                                  "but crash_elfcorehdr_size does not (kernel/ksysfs.c "
                                                  "creates it under CONFIG_VMCORE_INFO && "
                                                  "CONFIG_CRASH_HOTPLUG)")
    if sysfs.get("kexec_file_load") is not None:  # probed by the helper (put_kernel_facts)
        facts["CONFIG_KEXEC_FILE"] = Fact("y", "running kernel: kexec_file_load(2) with invalid flags "
                                               "answers, not ENOSYS (kernel/kexec_file.c)") \
            if sysfs["kexec_file_load"] else \
            Fact("n", "running kernel: kexec_file_load(2) is ENOSYS (kernel/sys_ni.c COND_SYSCALL)")
    if sysfs.get("lockdown") is not None:
        facts["CONFIG_SECURITY_LOCKDOWN_LSM"] = Fact("y", "running kernel: /sys/kernel/security/"
                                                          "lockdown exists (security/lockdown/lockdown.c)")
    elif sysfs.get("securityfs"):
        facts["CONFIG_SECURITY_LOCKDOWN_LSM"] = Fact("n", "running kernel: securityfs has no "
                                                          "lockdown file (security/lockdown/lockdown.c "
                                                          "creates it whenever the LSM is built in)")
    return facts


def from_config_gz(gz_hex: str | None) -> dict[str, str] | None:
    """The running kernel's /proc/config.gz, hex encoded by the helper; None if unreadable."""
    try:
        return parse_config(gzip.decompress(bytes.fromhex(gz_hex or "")).decode("utf-8", "replace"))
    except (ValueError, OSError, EOFError, zlib.error):
        return None


@dataclass
class KernelFacts:
    """What the lab knows about the options a scenario's expectation needs."""

    config_file: dict[str, str] | None = None  # the whole file, when there is one
    config_file_source: str = ""
    running: dict[str, Fact] | None = None  # learned from the running kernel
    config_gz: dict[str, str] | None = None

    def fact(self, symbol: str) -> Fact | None:
        if self.config_gz is not None:
            return Fact(self.config_gz.get(symbol, "n"), "running kernel: /proc/config.gz")
        if self.running and symbol in self.running:
            return self.running[symbol]
        if self.config_file is not None:
            return Fact(self.config_file.get(symbol, "n"), self.config_file_source)
        return None

    def to_json(self, symbols: list[str]) -> dict:
        """symbol -> {value, source} (or unknown), plus what a config file said if it differs."""
        out = {}
        for symbol in symbols:
            fact = self.fact(symbol)
            entry = fact.to_json() if fact else {"value": None, "source": "unknown"}
            if self.config_file is not None and fact and fact.source != self.config_file_source:
                said = self.config_file.get(symbol, "n")
                entry["config_file"] = said if said == fact.value else f"{said} (disagrees)"
            out[symbol] = entry
        return out


def resolve(expect: Expectation, kernel: str, facts: KernelFacts, found: dict | None = None,
            arch: str = "x86_64") -> Expected:
    """The expectation for this kernel; UnknownFact when a case tried before the one that
    matches needs an option nothing told (cases are tried in order, first match wins).
    found: what the lab found in the image (lab_key), for the cases that ask; arch: the
    guest architecture, for cases that name one."""
    symbols: dict[str, str] = {}
    for case in expect.cases:
        if case.arch is not None and case.arch != arch:
            continue  # another architecture's answer: its options do not matter here
        if case.lab_key is not None and (found or {}).get("lab_key") is None:
            raise UnknownFact("lab_key (whether the lab's signing key is built into the kernel: "
                              "its image could not be read for it)")
        if case.config is None:  # a kernel name, a lab key or an architecture alone
            if case.matches(kernel, symbols, found, arch):
                break
            continue
        symbol, _, value = case.config.partition("=")
        fact = facts.fact(symbol)
        if fact is None:
            raise UnknownFact(symbol)
        symbols[symbol] = fact.value
        if fact.value == value:
            break
    return expect.resolve(kernel, symbols, found, arch)
