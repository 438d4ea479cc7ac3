"""The causes a failure outcome can have: what a scenario's `cause:` may name.

evidence/causes.py says how each is recognised; this is the vocabulary the
scenario schema validates against, per failure outcome.
"""

from __future__ import annotations

from labctl.result import Outcome

LAB_TIMEOUT = "lab-timeout"
HALT_HOWS = {"hlt with interrupts off": "hlt", "jump-to-self": "self-jump"}
FAULT_LOOP = "fault loop"  # evidence/verdict.py ParkWatch.faulting: the cause fault-loop
HALT_PLACES = ("kernel", "initrd", "boot_params", "elfcorehdr", "purgatory", "backup", "dtb",
               "reservation")
CAUSES: dict[str, tuple[str, ...]] = {
    # evidence/dump_check.py's problem kinds, refined by evidence/causes.py (opensbi-region,
    # missing-symbol)
    Outcome.DUMP_MISMATCH: ("pt-load-offset", "pt-load-range", "page-content", "hot-added-memory",
                            "low-memory", "page-unreadable", "opensbi-region", "dump-log",
                            "missing-symbol", "cpu-notes"),
    Outcome.CAPTURE_PANICKED: ("no-root-fs", "no-init", "init-exited", "out-of-memory", "oops", "other"),
    Outcome.CAPTURE_DAMAGED: ("initramfs-checksum", "initramfs-missing-file", "missing-reader"),
    # where the vCPU stopped; fault-loop: re-taking a fault where nothing is mapped (no place)
    Outcome.CAPTURE_HALTED: (*(f"{how}-in-{place}" for how in HALT_HOWS.values() for place in HALT_PLACES),
                             "fault-loop"),
}
FAILURE_CLASSES = tuple(CAUSES)
