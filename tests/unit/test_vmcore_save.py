"""--save-vmcore's host side: windows read from guest RAM and base64 chunks, both checked."""

from __future__ import annotations

import base64
import hashlib

import pytest

from labctl.guest.memory import GuestMemory
from labctl.pair.vmcore_save import PAGE, DumpReceiver


@pytest.fixture
def memory(tmp_path):
    path = tmp_path / "guest-ram"
    path.write_bytes(bytes(range(256)) * (64 * PAGE // 256))
    mem = GuestMemory(path)
    yield mem
    mem.close()


def window(memory, seq, pfns, length):
    data = b"".join(memory.read(p * PAGE, PAGE) for p in pfns)[:length]
    return {"type": "vmcore-window", "seq": seq, "bytes": length, "pfns": pfns,
            "sha256": hashlib.sha256(data).hexdigest()}, data


def test_windows_are_read_from_the_page_frames_the_guest_names(tmp_path, memory):
    receiver = DumpReceiver(tmp_path)
    one, first = window(memory, 0, [5, 3], 2 * PAGE)
    two, second = window(memory, 1, [9], 100)
    assert receiver.window(one, memory) and receiver.window(two, memory)
    stream = first + second
    saved = {"type": "vmcore-saved", "channel": "memory", "rc": 0, "bytes": len(stream),
             "sha256": hashlib.sha256(stream).hexdigest()}
    evidence = receiver.finish(saved)
    assert (tmp_path / "vmcore.flat").read_bytes() == stream
    assert evidence["channel"] == "memory" and evidence["bytes"] == len(stream)
    # not a flattened dump: the host's makedumpfile -R (Makefile's APT_PACKAGES) refuses it
    # and the stream is kept as it came
    assert evidence["file"] == "vmcore.flat" and evidence["problems"][0].startswith("makedumpfile -R failed")


def test_a_window_that_changed_or_names_no_pages_stops_the_stream(tmp_path, memory):
    receiver = DumpReceiver(tmp_path)
    changed, _ = window(memory, 0, [1], PAGE)
    changed["sha256"] = "0" * 64
    assert not receiver.window(changed, memory)
    assert not receiver.window({"seq": 0, "bytes": PAGE, "pfns": [0]}, memory)
    assert not receiver.window({"seq": 0, "bytes": PAGE, "pfns": [10 ** 9]}, memory)
    evidence = receiver.finish({"rc": 0, "bytes": 0, "sha256": ""})
    assert evidence["problems"][0] == "window 0 changed before the host read it (its SHA-256 " \
                                      "differs from the guest's)"
    assert len(evidence["problems"]) == 3 and "file" not in evidence


def test_base64_chunks_and_a_stream_damaged_on_the_way(tmp_path):
    receiver = DumpReceiver(tmp_path)
    receiver.chunk({"seq": 0, "data": base64.b64encode(b"abc").decode()})
    receiver.chunk({"seq": 1, "data": base64.b64encode(b"def").decode()})
    evidence = receiver.finish({"rc": 0, "bytes": 6, "sha256": hashlib.sha256(b"abcdeX").hexdigest()})
    assert evidence["problems"][0].startswith("the stream was damaged on the way: the guest sent 6 bytes")
    assert (tmp_path / "vmcore.flat").read_bytes() == b"abcdef"
