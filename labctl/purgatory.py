"""Purgatory's entry point, and the gdb command line that stops there.

Kernels from 6.7 print the entry with KEXEC_FILE_DEBUG (`kexec_file_load:
type:1, start:0x...`); it lies inside the purgatory segment, where the
crashed kernel jumps to have purgatory check the segments' SHA-256 digest.
"""

from __future__ import annotations

import shlex

from labctl.segments import SegmentTable


def entry_point(table: SegmentTable | None) -> int | None:
    """The logged entry point, if the kernel printed one."""
    return table.entry if table is not None else None


def gdb_argv(port: int, entry: int | None) -> list[str]:
    """gdb attached to QEMU's gdbstub, with a hardware breakpoint at purgatory's entry."""
    argv = ["gdb", "-q", "-ex", "set architecture i386:x86-64",
            "-ex", f"target remote 127.0.0.1:{port}"]
    if entry is not None:
        argv += ["-ex", f"hbreak *{entry:#x}"]
    return argv + ["-ex", "continue"]


def gdb_hint(port: int, table: SegmentTable | None) -> str:
    """What to tell the person: the exact command, and what it will stop at."""
    entry = entry_point(table)
    if table is None:
        note = "the purgatory entry point is known once the capture kernel is loaded"
    elif entry is None:
        note = "this kernel did not log the purgatory entry point: no breakpoint set"
    else:
        note = f"it stops at the purgatory entry point {entry:#x} after the panic"
    return f"gdb (gdbstub on 127.0.0.1:{port}; {note}):\n  {shlex.join(gdb_argv(port, entry))}"
