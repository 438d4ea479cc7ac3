"""Guest-memory writes through a mapped file, as on the real RAM backing file."""

import pytest

from labctl.guest.memory import GuestMemory, pattern_bytes


@pytest.fixture
def memory(tmp_path):
    path = tmp_path / "ram"
    path.write_bytes(bytes(range(256)) * 16)
    mem = GuestMemory(path)
    yield mem
    mem.close()


def test_corrupt_records_before_written_after(memory, tmp_path):
    write = memory.corrupt(0x100, 4, "flip")
    assert write.before == "00010203" and write.written == "fffefdfc" and write.after == "fffefdfc"
    assert write.verified and write.to_json()["address"] == "0x100"
    assert (tmp_path / "ram").read_bytes()[0x100:0x104] == bytes.fromhex("fffefdfc")


@pytest.mark.parametrize("pattern", ["flip", "zero", "random", "bit"])
def test_every_pattern_changes_the_bytes(pattern):
    original = bytes.fromhex("01ff00a5")
    new = pattern_bytes(original, pattern, seed=7)
    assert len(new) == len(original)
    if pattern == "zero":
        assert new == bytes(4)
    else:
        assert new != original
    if pattern == "bit":
        assert new == bytes.fromhex("00ff00a5")


def test_random_is_seeded_and_never_a_no_op():
    assert pattern_bytes(bytes(64), "random", 3) == pattern_bytes(bytes(64), "random", 3)
    assert pattern_bytes(bytes(64), "random", 3) != pattern_bytes(bytes(64), "random", 4)
    assert all(b != 0 for b in pattern_bytes(bytes(4096), "random", 1))


def test_zeroing_zeros_is_reported_unverified(memory):
    memory.write(0x10, bytes(8))
    assert not memory.corrupt(0x10, 8, "zero").verified


def test_out_of_range_is_refused(memory):
    with pytest.raises(ValueError, match="outside RAM"):
        memory.read(memory.size - 2, 4)
    with pytest.raises(ValueError):
        memory.corrupt(-1, 4, "flip")
