"""Hotplug after the load: CPUs and a DIMM through QMP device_add, onlined in the guest,
and the ELF core headers (the elfcorehdr segment) read from guest RAM before and after.

Why it matters: on 6.12 the elfcorehdr is left out of purgatory's digest because of
CONFIG_CRASH_HOTPLUG, which lets the kernel rewrite it when CPUs or memory change
after the load (kernel/crash_core.c: crash_handle_hotplug_event ->
arch/x86/kernel/crash.c: arch_crash_handle_hotplug_event).  The lab records whether
the bytes changed and whether the dump then has the new CPU's note.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from labctl.errors import ConfigError, InfraError
from labctl.evidence.segments import SegmentTable
from labctl.guest.memory import GuestMemory


def cpu_device(entry: dict, device_id: str) -> dict:
    """device_add arguments for a free slot of query-hotpluggable-cpus.  On x86 `pc` the
    slot names the CPU model's QOM type (max-x86_64-cpu for -cpu max) and its
    socket/core/thread ids; another architecture may need other properties here."""
    return {"driver": entry["type"], "id": device_id, **entry["props"]}


def free_slots(hotpluggable: list[dict]) -> list[dict]:
    """Slots without a plugged CPU (no qom-path), lowest socket/core/thread first."""
    return sorted((e for e in hotpluggable if "qom-path" not in e),
                  key=lambda e: tuple(sorted(e["props"].items())))


def read_headers(memory: GuestMemory, table: SegmentTable) -> tuple[int, bytes] | None:
    """The elfcorehdr segment as it is in guest RAM now, whole (memsz: a rewrite may grow
    past the first bufsz), with its address."""
    segment = table.by_role("elfcorehdr")
    return None if segment is None else (segment.mem, memory.read(segment.mem, segment.memsz))


def bytes_changed(before: tuple[int, bytes] | None, after: tuple[int, bytes] | None) -> dict:
    """How many bytes of the segment differ, and the first and last that do."""
    if before is None or after is None or before[0] != after[0]:
        return {}
    offsets = [i for i, (a, b) in enumerate(zip(before[1], after[1], strict=False)) if a != b]
    return {"count": len(offsets), "first": hex(offsets[0]) if offsets else None,
            "last": hex(offsets[-1]) if offsets else None}


def headers_facts(memory: GuestMemory, table: SegmentTable) -> dict:
    """Digest and program headers of the elfcorehdr segment as it is in guest RAM now."""
    return describe_headers(read_headers(memory, table))


def describe_headers(found: tuple[int, bytes] | None) -> dict:
    if found is None:
        return {"error": "no elfcorehdr segment in the load's table"}
    address, data = found
    facts: dict = {"address": hex(address), "sha256": hashlib.sha256(data).hexdigest()}
    try:
        headers = [seg.header for seg in ELFFile(io.BytesIO(data)).iter_segments()]
    except (ELFError, ValueError) as exc:
        return {**facts, "error": f"not an ELF header: {exc}"}
    types = [h["p_type"] for h in headers]
    loads = [[hex(h["p_paddr"]), hex(h["p_paddr"] + h["p_memsz"])] for h in headers if h["p_type"] == "PT_LOAD"]
    return {**facts, "phnum": len(types), "pt_load": types.count("PT_LOAD"), "load_ranges": loads,
            "pt_note": types.count("PT_NOTE"),  # one per possible CPU, plus VMCOREINFO
            "note_addresses": [hex(h["p_offset"]) for h in headers if h["p_type"] == "PT_NOTE"]}


def hot_add_cpus(session, count: int, first_cpu: int) -> tuple[dict, dict]:
    """Plug `count` CPUs through QMP and online each in the guest (Linux numbers them
    after the boot CPUs: first_cpu, first_cpu + 1, ...).  Evidence: the slots and the
    guest's CPU report afterwards; and that report."""
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
    session.progress.say(f"CPUs online now {reply.get('cpus_online')}")
    return {"added": added, "guest": {k: reply.get(k) for k in (
        "cpus_online", "cpus_present", "cpus_possible", "crash_hotplug", "cpus")}}, reply


def dimm_device(backend_id: str, mib: int, path: Path) -> tuple[dict, dict]:
    """object-add and device_add arguments for one DIMM of `mib` MiB, backed by a shared
    file (QEMU creates it in the private run directory) so that the host can read what
    the crashed kernel had there and check the dump's PT_LOAD for it (dump_check.py)."""
    backend = {"qom-type": "memory-backend-file", "id": backend_id, "size": mib << 20,
               "mem-path": str(path), "share": True}
    return backend, {"driver": "pc-dimm", "id": f"{backend_id}-dimm", "memdev": backend_id}


def hot_add_memory(session, mib: int) -> dict:
    """Plug a DIMM and have the guest online its memory blocks (6.12 onlines them itself,
    CONFIG_MHP_DEFAULT_ONLINE_TYPE_ONLINE_AUTO; 6.1 leaves them offline)."""
    before = session.ask("memory-online 0", ("memory",), "the memory block count")
    block = int(before.get("block_size_bytes") or "0", 16)
    if not block:
        # drivers/base/Makefile: memory.o (/sys/devices/system/memory) is CONFIG_MEMORY_HOTPLUG's
        raise ConfigError("the scenario hot-adds memory, but this kernel has no "
                          "/sys/devices/system/memory/block_size_bytes (built without "
                          "CONFIG_MEMORY_HOTPLUG): it does not apply to this kernel",
                          key=("hotplug", "memory_mib"))
    assert session.machine.rundir is not None, "a launched machine"
    path = session.machine.rundir / "hotmem0.ram"
    backend, device = dimm_device("hotmem0", mib, path)
    session.progress.say(f"hot-adding a {mib} MiB DIMM through QMP")
    session.machine.command("object-add", **backend)
    session.machine.command("device_add", **device)
    dimm = next(d["data"] for d in session.machine.command("query-memory-devices")
                if d["data"].get("id") == device["id"])
    want = before["online_blocks"] + (mib << 20) // block
    after = session.ask(f"memory-online {want}", ("memory",), "the DIMM's memory to come online")
    if after["online_blocks"] < want:
        raise InfraError(f"the guest onlined {after['online_blocks']} memory blocks, "
                         f"{want} expected after the DIMM")
    session.hot_memory_files.append((dimm["addr"], path))
    return {"dimm": {"address": hex(dimm["addr"]), "size": hex(dimm["size"])},
            "block_size": hex(block), "blocks_online_before": before["online_blocks"],
            "blocks_online_after": after["online_blocks"]}
