"""The CPUs as the dump records them: per-CPU PRSTATUS notes and the crashed kernel's log.

At a crash every online CPU saves its registers in its own note (kernel/crash_core.c:
crash_save_cpu): the panicking CPU from __crash_kexec (crash_setup_regs, inlined there,
records the registers at that point), each other CPU from the NMI that stops it
(arch/x86/kernel/crash.c: kdump_nmi_callback, with the registers the NMI interrupted,
i.e. where that CPU was: its idle halt on an idle guest, or the panic path of a CPU that
lost the race to panic).  The capture kernel drops the notes of CPUs that saved nothing
and keeps the others in CPU order (fs/proc/vmcore.c: merge_note_headers_elf64), so with
one note per online CPU the k-th note is the k-th online CPU's.

The panicking CPU is then known from the dump twice over: the `CPU: N ... PID: P` line
the panic's dump_stack wrote to the log (read out of the dump by vmcore-dmesg, so also
after an NMI panic whose console output was deferred), and the one note whose PC is in
the crash path, which must be CPU N's and carry pid P.  PCs are named with the kernel's
own kallsyms, read out of the crashed kernel's memory (kernel_symbols.py).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Protocol

from elftools.elf.elffile import ELFFile

from labctl.evidence.smp import STACK_CPU

# struct elf_prstatus on 64-bit (include/linux/elfcore.h): pr_pid at 32, pr_reg at 112.
PR_PID = 32
PR_REG = 112
# e_machine -> (index of the PC, index of the stack pointer) in pr_reg: x86_64's
# user_regs_struct has rip 16th and rsp 19th; arm64's user_pt_regs x0-x30, sp, pc;
# riscv64's user_regs_struct pc, ra, sp.
REGISTERS = {"EM_X86_64": (16, 19), "EM_AARCH64": (32, 31), "EM_RISCV": (0, 2)}
X86_CS = 17  # user_regs_struct.cs: its low two bits are the privilege level
# Where the panicking CPU's note was written: crash_setup_regs is inlined into __crash_kexec
# (kernel/crash_core.c in 6.12, kernel/kexec_core.c before); arm64 and riscv have their own.
CRASH_PATH = ("__crash_kexec", "crash_kexec", "machine_crash_shutdown", "crash_setup_regs")
PANIC_LINE = re.compile(r"Kernel panic - not syncing")


@dataclass(frozen=True)
class Note:
    """One CPU's saved registers."""

    pid: int
    pc: int
    sp: int
    user: bool  # saved in user mode (x86: CS privilege level 3)

    def to_json(self, symbols: "Symbols | None") -> dict:
        out = {"pid": self.pid, "pc": hex(self.pc), "sp": hex(self.sp), "user": self.user}
        if symbols is not None and not self.user:
            out["symbol"] = symbols.name(self.pc)
        return out


def prstatus_notes(head: bytes) -> list[Note]:
    """The NT_PRSTATUS notes of the dump's head, in order (one per CPU that saved)."""
    elf = ELFFile(io.BytesIO(head))
    if elf["e_machine"] not in REGISTERS:
        return []
    pc_index, sp_index = REGISTERS[elf["e_machine"]]
    notes = []
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_NOTE":
            continue
        for note in seg.iter_notes():
            desc = note["n_desc"]
            if note["n_type"] != "NT_PRSTATUS" or not isinstance(desc, bytes):
                continue
            regs = [int.from_bytes(desc[i:i + 8], "little") for i in range(PR_REG, len(desc) - 7, 8)]
            if len(regs) <= max(pc_index, sp_index):
                continue
            user = elf["e_machine"] == "EM_X86_64" and len(regs) > X86_CS and regs[X86_CS] & 3 == 3
            notes.append(Note(int.from_bytes(desc[PR_PID:PR_PID + 4], "little"), regs[pc_index],
                              regs[sp_index], user))
    return notes


class Symbols(Protocol):
    """Names a kernel address (function+0xoff), None outside the kernel's text: the crashed
    kernel's own kallsyms (kernel_symbols.py)."""

    def name(self, address: int) -> str | None: ...


def panic_cpu_in_log(lines: list[str]) -> dict | None:
    """The first dump_stack header after the panic line: {cpu, pid, line}."""
    after = False
    for line in lines:
        if PANIC_LINE.search(line):
            after = True
        elif after and (m := STACK_CPU.search(line)):
            pid = re.search(r"PID: (\d+)", m[0])
            return {"cpu": int(m[1]), "pid": int(pid[1]) if pid else None, "line": m[0].strip()}
    return None


def _function(symbol: str | None) -> str | None:
    return symbol.split("+")[0] if symbol else None


def check(head: bytes, log: list[str] | None, online: list[int], symbols: Symbols | None) -> dict:
    """Which CPU panicked by the dump's log and notes; every other CPU online at the crash
    (the helper's last report: hot-added CPUs included) has its note read."""
    notes = prstatus_notes(head)
    evidence: dict = {"online": online, "notes": [n.to_json(symbols) for n in notes],
                      "symbols": symbols is not None, "problems": []}
    problems = evidence["problems"]
    logged = panic_cpu_in_log(log) if log is not None else None
    evidence["log"] = logged
    if log is not None and logged is None:
        evidence["log_why"] = ("no `CPU: N ... PID:` line after the panic in the dump's log: "
                               "kernel/panic.c calls dump_stack() only under CONFIG_DEBUG_BUGVERBOSE")
    if len(notes) != len(online) or not notes:
        evidence["by_cpu"] = None  # which note is whose is not known; smp.py counts them
        return evidence
    by_cpu = dict(zip(online, notes, strict=True))
    evidence["by_cpu"] = {str(cpu): note.to_json(symbols) for cpu, note in by_cpu.items()}
    crash_path = [cpu for cpu, note in by_cpu.items()
                  if symbols is not None and _function(symbols.name(note.pc)) in CRASH_PATH]
    evidence["crash_path_cpus"] = crash_path if symbols is not None else None
    panic = None
    if logged is not None:
        panic = evidence["panic_cpu"] = logged["cpu"]
        _panicking(by_cpu.get(logged["cpu"]), logged, crash_path, symbols, problems)
    elif symbols is not None:  # the notes alone: exactly one saved in the crash path
        if len(crash_path) == 1:
            panic = evidence["panic_cpu"] = crash_path[0]
        else:
            problems.append(f"{len(crash_path)} PRSTATUS notes were saved in the crash path "
                            f"({', '.join(CRASH_PATH[:2])}), one expected")
    for cpu, note in by_cpu.items():
        if cpu != panic:
            _stopped(cpu, note, symbols, problems)
    return evidence


def _panicking(note: Note | None, logged: dict, crash_path: list[int], symbols: Symbols | None,
               problems: list[str]) -> None:
    cpu = logged["cpu"]
    if note is None:
        problems.append(f"the log in the dump says CPU {cpu} panicked, which was not online")
        return
    if logged["pid"] is not None and note.pid != logged["pid"]:
        problems.append(f"the log in the dump says PID {logged['pid']} panicked on CPU {cpu}, "
                        f"but CPU {cpu}'s PRSTATUS note has pid {note.pid}")
    if symbols is not None and crash_path != [cpu]:
        problems.append(f"the log in the dump says CPU {cpu} panicked, but the note(s) saved in "
                        f"the crash path ({', '.join(CRASH_PATH[:2])}) are CPU(s) {crash_path} "
                        f"(CPU {cpu} at {symbols.name(note.pc)})")


def _stopped(cpu: int, note: Note, symbols: Symbols | None, problems: list[str]) -> None:
    """Another CPU: its note holds the registers the crash NMI interrupted, in the kernel's
    text or in user space; a PC nowhere (zero, garbage) was not saved by the crash path."""
    if note.user or symbols is None:
        return
    if symbols.name(note.pc) is None:
        problems.append(f"CPU {cpu}'s PRSTATUS note has PC {note.pc:#x}, outside the kernel's "
                        "text: not registers the crash NMI saved")


def name_vcpus(symbols: Symbols | None, rips: dict[int, int]) -> dict[str, str | None]:
    """QMP's last RIP of each vCPU, named with the crashed kernel's symbols (the vCPU that
    went on runs the capture kernel, whose addresses these names do not fit)."""
    return {} if symbols is None else {str(vcpu): symbols.name(rip) for vcpu, rip in sorted(rips.items())}
