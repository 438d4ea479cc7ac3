"""The two exchanges with the capture kernel's helper after its hello: the dump check
(page hashes and the dump's own log, against the RAM file and the console) and
--save-vmcore's stream of a filtered dump.

Both are loops on the guest link (link.py) with deadlines of their own; what they
compare and how they judge is evidence/dump_check.py and pair/vmcore_save.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from labctl.errors import InfraError
from labctl.evidence import dump_check, kernel_symbols
from labctl.pair.link import GuestLink
from labctl.pair.vmcore_save import DumpReceiver

SAVE_VMCORE_SECONDS = 900.0  # a few MB over the serial line, a few hundred KB/s under TCG
DUMP_REPLY_SECONDS = 30.0  # the capture helper's page hashes and vmcore-dmesg (about 0.5 s)


def check_dump(link: GuestLink, facts: dump_check.DumpFacts, symbols_cache: Path | None,
               timings: dict[str, float]) -> dict:
    """Ask the capture helper for what `facts` needs (page hashes, the dump's log), read
    the crashed kernel's symbols from guest RAM meanwhile, and judge (dump_check.verify).
    A reply that never comes is a problem in the dump, named, never a pass."""
    start = time.monotonic()
    for command in facts.requests().values():
        link.control.send(command)
    # while the capture helper hashes pages and runs vmcore-dmesg
    memories = [link.memory, *facts.hot_memory]
    facts.symbols, facts.symbols_missing = kernel_symbols.kallsyms(facts.head, memories, symbols_cache)
    timings["dump_kallsyms"] = round(time.monotonic() - start, 3)
    wanted = set(facts.requests())
    while wanted and time.monotonic() - start < DUMP_REPLY_SECONDS:
        messages, _ = link.events({}, strict=False)
        for message in messages:
            kind = message["type"] if message["type"] in wanted else \
                (message.get("what") == "/sbin/vmcore-dmesg" and "vmcore-dmesg")
            if kind in wanted:
                facts.replies[kind] = message
                wanted.discard(kind)
        if not link.machine.alive():
            raise link.guest_gone()
    dump = dump_check.verify(facts)
    if wanted:
        dump["problems"].append(f"the capture helper did not answer {', '.join(sorted(wanted))} "
                                f"within {DUMP_REPLY_SECONDS:g} s (reading /proc/vmcore hung?)")
        dump["ok"] = False
    timings["dump_check"] = round(time.monotonic() - start, 3)
    return dump


def save_vmcore(link: GuestLink, directory: Path, timings: dict[str, float]) -> dict:
    """Stream a filtered, compressed dump out of the capture kernel (vmcore_save.py)."""
    start = time.monotonic()
    link.progress.say("saving a filtered, compressed dump (makedumpfile -c -d 23)")
    receiver = DumpReceiver(directory)
    link.control.send("save-vmcore")
    try:
        while True:
            messages, _ = link.events({}, strict=False)
            for message in messages:
                if message["type"] == "vmcore-window":
                    link.control.send("next" if receiver.window(message, link.memory) else "stop")
                elif message["type"] == "vmcore-chunk":
                    receiver.chunk(message)
                elif message["type"] in ("vmcore-saved", "error"):
                    evidence = receiver.finish(message)
                    timings["save_vmcore"] = round(time.monotonic() - start, 3)
                    link.progress.say(f"saved {receiver.bytes} bytes in {timings['save_vmcore']:.1f} s: "
                                      f"{evidence.get('file')}")
                    return evidence
            if not link.machine.alive():
                raise link.guest_gone()
            if time.monotonic() - start > SAVE_VMCORE_SECONDS:
                raise InfraError(f"--save-vmcore: no end of the dump after {SAVE_VMCORE_SECONDS:g} s "
                                 f"({receiver.bytes} bytes so far)")
            link.progress.tick(f"the dump ({receiver.bytes >> 10} KiB so far)", start)
    finally:
        receiver.close()
