"""What a load's evidence says about signatures and lockdown: kexec-tools' errno in words,
the kernel's own log lines, and the primary command line a scenario adds to."""

from __future__ import annotations

import errno

from labctl.config.schema import MachineConfig
from labctl.evidence.segments import SegmentTable
from labctl.pair.runner import primary_cmdline
from labctl.pair.steps import Loaded, kexec_tools_errno

# kexec-tools 2.0.26 under lockdown=integrity (debian-6.12, recorded), cut
KEXEC_TOOLS_OUTPUT = [
    "kexec_load failed: Operation not permitted",
    "entry       = 0x3df54760 flags = 0x3e0001",
    "nr_segments = 7",
    "segment[0].buf   = 0x55cfce5366d0",
]


def test_kexec_tools_errno_comes_from_its_words():
    assert kexec_tools_errno(KEXEC_TOOLS_OUTPUT) == {"errno": errno.EPERM,
                                                     "strerror": "Operation not permitted"}
    assert kexec_tools_errno(["Could not find a free area of memory of 0x1000 bytes..."]) == {}
    assert kexec_tools_errno(["kexec_load failed: Something no libc says"]) == {}


def test_load_evidence_keeps_the_kernels_lockdown_and_signature_lines():
    log = ["kexec_file: kernel: 000000003b6c7a4b kernel_size: 0x4e1d08",
           "PEFILE: Unsigned PE binary",
           "Lockdown: kexec-lab-helpe: kexec of unsigned images is restricted; see man kernel_lockdown.7",
           "kexec_file: Enforced kernel signature verification failed (-61)."]
    loaded = Loaded({"type": "loaded", "rc": -1, "errno": 1, "strerror": "x", "log": log},
                    SegmentTable([]))
    assert loaded.evidence()["kernel_log"] == log[1:]
    quiet = Loaded({"type": "loaded", "rc": 0, "errno": 0, "log": log[:1]}, SegmentTable([]))
    assert "kernel_log" not in quiet.evidence()


def test_a_scenarios_boot_words_come_after_the_labs():
    machine = MachineConfig()
    assert primary_cmdline(machine, True, "lockdown=integrity") == (
        "console=ttyS0,115200 crashkernel=256M panic=0 no_timer_check lockdown=integrity")
    assert primary_cmdline(machine) == "console=ttyS0,115200 crashkernel=256M panic=0 no_timer_check"
