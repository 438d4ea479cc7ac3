"""The live half of evidence/identity.py: where the vCPUs run, and the capture kernel's
log read from guest RAM, taken from a running Session (QMP and the RAM file)."""

from __future__ import annotations

import time

from labctl.errors import InfraError
from labctl.evidence.identity import (
    CAPTURE,
    IdentityWatch,
    Position,
    confirm,
    decide_end,
    page_table_root,
    parse_gpa,
    where_votes,
)
from labctl.evidence.verdict import cpu_parts, parse_registers
from labctl.result import Outcome

COST = "identity_checks"  # timings key: what these checks cost the run, in seconds


def _cost(session, began: float) -> None:
    session.timings[COST] = round(session.timings.get(COST, 0.0) + time.monotonic() - began, 3)


def positions(session) -> list[Position]:
    """Each vCPU's program counter, QEMU's translation of it to a physical address (gva2gpa
    through that vCPU's page tables) and its page-table root."""
    began = time.monotonic()
    machine = session.machine
    try:
        registers = machine.hmp("info registers -a")
        parts = cpu_parts(registers)
        return [Position(cpu, pc, translate(session, cpu, pc), page_table_root(session.arch.name, parts.get(cpu, "")))
            for cpu, pc in sorted(parse_registers(registers, session.arch).items())]
    except InfraError:
        if machine.alive():
            raise
        return []  # QEMU ended meanwhile: the where-signals have nothing to say
    finally:
        _cost(session, began)


def where_of(session, now: list[Position]) -> list:
    """identity.where_votes for this guest: its reservation, and the DIMMs it hot-added as
    memory either kernel may own."""
    shared = tuple((address, address + path.stat().st_size) for address, path in session.hot_memory_files)
    return where_votes(now, session.primary.get("crashkernel"), shared)


def translate(session, cpu: int, address: int) -> int | None:
    """A virtual address through one vCPU's MMU as it is now (QEMU's gva2gpa); None when it
    maps nothing there."""
    return parse_gpa(session.machine.command(
        "human-monitor-command", **{"command-line": f"gva2gpa {address:#x}", "cpu-index": cpu}))


def confirm_capture(session, identity: IdentityWatch, *votes) -> dict:
    """The identity evidence for an outcome that says a capture kernel ran: these votes,
    the log in RAM if read, and where the vCPUs are now."""
    now = positions(session)
    return confirm(CAPTURE, [*votes, *identity.ram_votes(),
                             *where_of(session, now)], now)


def ended(claim: str) -> Outcome:
    """Whose panic ended: a capture kernel's (capture-panicked) or the crashed kernel's, which
    gave up on kexec (panic-halted)."""
    return Outcome.CAPTURE_PANICKED if claim == CAPTURE else Outcome.PANIC_HALTED


def console_end(session, identity: IdentityWatch, end_line: str) -> tuple[Outcome, dict]:
    """An end-of-panic line on the console: whose it is on identity.py's votes and where the
    vCPUs run now, never on a banner alone: (outcome, identity evidence)."""
    now = positions(session)
    claim, evidence = decide_end(identity, end_line, where_of(session, now), now)
    return ended(claim), evidence


def scan_ram(session, identity: IdentityWatch) -> tuple[tuple[str, dict] | None, list]:
    """While a vCPU runs mapped code in the reservation, read the capture kernel's own log
    from its memory (identity.RamLog); a panic it did not print ends there too: (capture or
    primary, evidence) once its end-of-panic record is there, else None; and the
    where-votes of the vCPUs read for it (one register read serves both)."""
    now = positions(session)
    where = where_of(session, now)
    if identity.ram is None or not any(v.says == CAPTURE for v in where) or \
            all(p.physical in (None, p.pc) for p in now):  # nothing runs mapped yet
        return None, where
    began = time.monotonic()
    memory = session.memory
    identity.ram.scan(memory.find, memory.read, memory.written_ranges())
    _cost(session, began)
    if identity.ram.end_line is None:
        return None, where
    claim, evidence = decide_end(identity, identity.ram.end_line, where, now)
    return (claim, {"log_in_ram": identity.ram.end_line, "identity": evidence}), where
