"""Sanity checks on /proc/vmcore as the capture kernel sees it.

The capture helper sends the dump's size and its head (ELF header, program
headers, notes); pyelftools parses it on the host.  A sane dump is an ELF
core file with a PT_NOTE segment whose VMCOREINFO note names the release of
the kernel that crashed.
"""

from __future__ import annotations

import io

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile


def _note_text(desc) -> str:
    if isinstance(desc, bytes):
        return desc.decode("ascii", "replace")
    return str(desc)


def vmcoreinfo(head: bytes) -> dict[str, str]:
    """The VMCOREINFO note as key=value pairs ({} if there is none)."""
    elf = ELFFile(io.BytesIO(head))
    for segment in elf.iter_segments():
        if segment["p_type"] != "PT_NOTE":
            continue
        for note in segment.iter_notes():
            if note["n_name"] == "VMCOREINFO":
                pairs = (line.split("=", 1) for line in _note_text(note["n_desc"]).splitlines())
                return {k: v for k, *rest in pairs for v in rest}
    return {}


PR_PID = 32  # x86_64 struct elf_prstatus: pr_info(12) pr_cursig(2+2) sigpend sighold, pr_pid
PR_RIP = 112 + 16 * 8  # pr_reg (struct user_regs_struct) starts at 112; rip is its 17th word


def prstatus_facts(elf: ELFFile) -> dict:
    """The NT_PRSTATUS notes, one per CPU that saved its registers at the crash, with the
    pid each CPU was running (0: idle) and the RIP it saved (where the NMI found it)."""
    notes = [note["n_desc"] for seg in elf.iter_segments() if seg["p_type"] == "PT_NOTE"
             for note in seg.iter_notes() if note["n_type"] == "NT_PRSTATUS"]
    saved = [{"pid": int.from_bytes(d[PR_PID:PR_PID + 4], "little"),
              "rip": hex(int.from_bytes(d[PR_RIP:PR_RIP + 8], "little"))}
             for d in notes if isinstance(d, bytes) and len(d) >= PR_RIP + 8]
    return {"prstatus_notes": len(notes), "prstatus_saved": saved}


def check_vmcore(size: int | None, head_hex: str | None, release: str) -> dict:
    """Evidence dict with 'ok' and the facts found; 'problems' lists what failed."""
    facts: dict = {"size": size, "problems": []}
    problems = facts["problems"]
    if not size:
        problems.append("/proc/vmcore is missing or empty")
    try:
        head = bytes.fromhex(head_hex or "")
        elf = ELFFile(io.BytesIO(head))
        facts["e_type"] = elf["e_type"]
        facts["phnum"] = elf["e_phnum"]
        if elf["e_type"] != "ET_CORE":
            problems.append(f"ELF type is {elf['e_type']}, not ET_CORE")
        types = [seg["p_type"] for seg in elf.iter_segments()]
        facts["load_ranges"] = [[hex(seg["p_paddr"]), hex(seg["p_paddr"] + seg["p_memsz"])]
                                for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD"]
        facts["pt_note"] = types.count("PT_NOTE")
        facts["pt_load"] = types.count("PT_LOAD")
        if not facts["pt_note"]:
            problems.append("no PT_NOTE segment")
        facts.update(prstatus_facts(elf))
        info = vmcoreinfo(head)
        facts["osrelease"] = info.get("OSRELEASE")
        if not info:
            problems.append("no VMCOREINFO note")
        elif info.get("OSRELEASE") != release:
            problems.append(f"VMCOREINFO OSRELEASE {info.get('OSRELEASE')!r} != {release!r}")
    except (ValueError, ELFError) as exc:
        problems.append(f"vmcore head is not a valid ELF file: {exc}")
    facts["ok"] = not problems
    return facts
