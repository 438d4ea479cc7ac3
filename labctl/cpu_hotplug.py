"""CPU hotplug after the load: QMP device_add, online in the guest, and the ELF core
headers (the elfcorehdr segment) read from guest RAM before and after.

Why it matters: on 6.12 the elfcorehdr is left out of purgatory's digest because of
CONFIG_CRASH_HOTPLUG, which lets the kernel rewrite it when CPUs or memory change
after the load (kernel/crash_core.c: crash_handle_hotplug_event ->
arch/x86/kernel/crash.c: arch_crash_handle_hotplug_event).  The lab records whether
the bytes changed and whether the dump then has the new CPU's note.
"""

from __future__ import annotations

import hashlib
import io

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from labctl.errors import InfraError
from labctl.guest_memory import GuestMemory
from labctl.segments import SegmentTable


def cpu_device(entry: dict, device_id: str) -> dict:
    """device_add arguments for a free slot of query-hotpluggable-cpus.  On x86 `pc` the
    slot names the CPU model's QOM type (max-x86_64-cpu for -cpu max) and its
    socket/core/thread ids; another architecture may need other properties here."""
    return {"driver": entry["type"], "id": device_id, **entry["props"]}


def free_slots(hotpluggable: list[dict]) -> list[dict]:
    """Slots without a plugged CPU (no qom-path), lowest socket/core/thread first."""
    return sorted((e for e in hotpluggable if "qom-path" not in e),
                  key=lambda e: tuple(sorted(e["props"].items())))


def headers_facts(memory: GuestMemory, table: SegmentTable) -> dict:
    """The elfcorehdr segment as it is in guest RAM now: digest of the whole segment
    (memsz: a rewrite may grow past the first bufsz) and its program headers."""
    segment = table.by_role("elfcorehdr")
    if segment is None:
        return {"error": "no elfcorehdr segment in the load's table"}
    data = memory.read(segment.mem, segment.memsz)
    facts: dict = {"address": hex(segment.mem), "sha256": hashlib.sha256(data).hexdigest()}
    try:
        headers = [seg.header for seg in ELFFile(io.BytesIO(data)).iter_segments()]
    except (ELFError, ValueError) as exc:
        return {**facts, "error": f"not an ELF header: {exc}"}
    types = [h["p_type"] for h in headers]
    return {**facts, "phnum": len(types), "pt_load": types.count("PT_LOAD"),
            "pt_note": types.count("PT_NOTE"),  # one per possible CPU, plus VMCOREINFO
            "note_addresses": [hex(h["p_offset"]) for h in headers if h["p_type"] == "PT_NOTE"]}


def hot_add(session, table: SegmentTable, count: int, first_cpu: int) -> tuple[dict, dict]:
    """Plug `count` CPUs through QMP and online each in the guest (Linux numbers them
    after the boot CPUs: first_cpu, first_cpu + 1, ...).  Evidence: the slots, the
    guest's CPU report afterwards, the elfcorehdr before and after; and that report."""
    before = headers_facts(session.memory, table)
    slots = free_slots(session.machine.command("query-hotpluggable-cpus"))
    if len(slots) < count:
        raise InfraError(f"QEMU has {len(slots)} free CPU slot(s), the scenario hot-adds {count}")
    added, reply = [], {}
    for i, slot in enumerate(slots[:count]):
        session.progress.say(f"hot-adding a CPU through QMP ({slot['type']} {slot['props']})")
        session.machine.command("device_add", **cpu_device(slot, f"hotcpu{i}"))
        cpu = first_cpu + i
        reply = session.ask(f"cpu-online {cpu}", ("cpus", "error"), f"CPU {cpu} to come online")
        if reply["type"] == "error" or reply.get("errno"):
            raise InfraError(f"the guest could not online hot-added CPU {cpu}: errno "
                             f"{reply.get('errno')} (online: {reply.get('cpus_online')!r})")
        added.append({"cpu": cpu, "slot": slot["props"], "driver": slot["type"]})
    after = headers_facts(session.memory, table)
    session.progress.say(f"CPUs online now {reply.get('cpus_online')}; elfcorehdr "
                         f"{'changed' if before.get('sha256') != after.get('sha256') else 'unchanged'}")
    return {"added": added, "guest": {k: reply.get(k) for k in (
                "cpus_online", "cpus_present", "cpus_possible", "crash_hotplug", "cpus")},
            "elfcorehdr_before": before, "elfcorehdr_after": after,
            "elfcorehdr_changed": before.get("sha256") != after.get("sha256")}, reply
