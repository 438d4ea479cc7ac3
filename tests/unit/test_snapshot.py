"""Snapshots: the sparse RAM copy, the key, which scenarios share, the store's staleness."""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import fields, replace
from pathlib import Path

import pytest

from labctl.config.schema import load_scenario
from labctl.evidence.segments import parse_segment_table
from labctl.guest.machine import MachineSpec, qemu_argv
from labctl.guest.ramcopy import allocated_bytes, sparse_copy
from labctl.pair.snapshot import (
    FORMAT,
    META,
    RAM,
    STATE,
    ForkChoice,
    RestoreFailed,
    SnapshotStore,
    choose_fork,
    fresh_reason,
    load_reason,
    snapshot_inputs,
    snapshot_key,
)

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def sparse_file(path: Path, size: int, chunks: dict[int, bytes]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in chunks.items():
            f.seek(offset)
            f.write(data)


def test_sparse_copy_copies_the_data_and_keeps_the_holes(tmp_path):
    src, dst = tmp_path / "ram", tmp_path / "copy"
    sparse_file(src, 64 * MIB, {0: b"a" * 4096, 10 * MIB: os.urandom(3 * MIB), 63 * MIB: b"z"})
    written = sparse_copy(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert os.path.getsize(dst) == 64 * MIB
    assert written < 8 * MIB and allocated_bytes(dst) < 8 * MIB
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o600


def test_sparse_copy_can_leave_out_allocated_zeros(tmp_path):
    src, dst = tmp_path / "ram", tmp_path / "copy"
    sparse_file(src, 16 * MIB, {0: bytes(4 * MIB), 4 * MIB: b"x" * 100})
    assert 100 <= sparse_copy(src, dst, skip_zeros=True) <= MIB  # only the chunk with the x's
    assert dst.read_bytes() == src.read_bytes()
    assert allocated_bytes(dst) <= 2 * MIB


def test_sparse_copy_never_overwrites(tmp_path):
    src, dst = tmp_path / "ram", tmp_path / "copy"
    sparse_file(src, MIB, {0: b"x"})
    dst.write_text("mine")
    with pytest.raises(FileExistsError):
        sparse_copy(src, dst)


def spec(tmp_path, **changes) -> MachineSpec:
    for name in ("vmlinuz", "initrd"):
        if not (tmp_path / name).exists():
            (tmp_path / name).write_bytes(b"x")
    base = MachineSpec(kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd", cmdline="console=ttyS0")
    return replace(base, **changes)


LOAD = {"method": "kexec_file_load", "image": "default", "capture_cmdline": "console=ttyS0"}
KERNEL = {"name": "k", "package": "linux-image-x", "version": "1"}


def key(tmp_path, machine=None, load=LOAD, kernel=KERNEL) -> str:
    return snapshot_key(snapshot_inputs(machine or spec(tmp_path), kernel, load, "true"))


def test_every_machine_option_kernel_and_load_field_is_in_the_key(tmp_path):
    base = key(tmp_path)
    assert key(tmp_path) == base
    changed = {"cmdline": "console=ttyS0 quiet", "accel": "kvm", "machine_type": "q35",
               "memory_mib": 2048, "smp": 2, "maxcpus": 4, "tcg_threads": "single",
               "hotplug_memory_mib": 128, "arch": "arm64", "drives": ("file=disk.img,if=virtio",)}
    assert {f.name for f in fields(MachineSpec)} - {"kernel", "initrd", "gdb_port"} <= set(changed)
    for name, value in changed.items():
        assert key(tmp_path, spec(tmp_path, **{name: value})) != base, name
    for name, value in {"method": "kexec_load", "image": "garbage", "capture_cmdline": "x"}.items():
        assert key(tmp_path, load={**LOAD, name: value}) != base, name
    assert key(tmp_path, kernel={**KERNEL, "version": "2"}) != base
    os.utime(tmp_path / "vmlinuz", ns=(1, 1))  # the bzImage was rebuilt in place
    assert key(tmp_path) != base


def test_the_debug_port_does_not_change_the_guest_nor_the_key(tmp_path):
    assert key(tmp_path, spec(tmp_path, gdb_port=1234)) == key(tmp_path)


def test_a_restoring_qemu_waits_for_its_state():
    paths = [Path(p) for p in ("ram", "c", "k", "q")]
    plain = qemu_argv(MachineSpec(Path("k"), Path("i"), "x"), *paths)
    incoming = qemu_argv(MachineSpec(Path("k"), Path("i"), "x"), *paths, incoming=True)
    assert incoming == plain + ["-incoming", "defer"]


def test_which_catalogue_scenarios_fork_from_a_loaded_a_booted_or_no_snapshot():
    scenarios = {p.stem: load_scenario(p) for p in sorted((ROOT / "scenarios").glob("*.yaml"))}
    forked = {name for name, s in scenarios.items() if fresh_reason(s) is None}
    loaded = {name for name in forked if load_reason(scenarios[name]) is None}
    for name in loaded:  # they differ from each other only after the load
        s = scenarios[name]
        assert s.load.kernel == "default" and s.trigger != "none" and not s.then_intact, name
    assert {"crash-corrupt", "crash-intact", "crash-intact-nmi", "corrupt-elfcorehdr",
            "crash-corrupt-kexec-load", "unload-then-panic"} <= loaded
    booted = forked - loaded  # the load is the question: each run loads on its own
    assert {"load-no-crashkernel", "load-garbage", "load-truncated", "lockdown-unsigned"} <= booted
    assert "the load itself" in load_reason(scenarios["load-no-crashkernel"])
    assert "garbage image" in load_reason(scenarios["load-garbage"])
    assert "hot-adds CPUs" in fresh_reason(scenarios["cpu-hotplug"])
    hotplug = {name for name, s in scenarios.items() if s.hotplug}  # a new scenario needs no entry here
    assert {"cpu-hotplug", "cpu-hotplug-reload", "memory-hotplug", "memory-hotplug-reload"} <= hotplug
    assert len(loaded) >= 18 and forked == set(scenarios) - hotplug


TABLE_LINES = ["kexec_file: segment[0]: buf=0x0 bufsz=0x1000 mem=0x2e000000 memsz=0xe1000",
               "kexec_file: segment[1]: buf=0x0 bufsz=0x4000 mem=0x3dffb000 memsz=0x5000",
               "Loaded ELF headers at 0x2e000000", "Loaded purgatory at 0x3dffb000",
               "kexec_file_load: type:1, start:0x3dffb160"]


def commit(store: SnapshotStore, key_: str, inputs: dict | None = None) -> Path:
    tmp = store.new_dir(key_)
    (tmp / STATE).write_bytes(b"state")
    sparse_file(tmp / RAM, 4 * MIB, {MIB: b"ram"})
    table = parse_segment_table(TABLE_LINES)
    meta = {"inputs": inputs or {"format": FORMAT}, "load": {"table": table.to_json()}}
    return store.commit(key_, tmp, meta).path


def test_a_committed_snapshot_is_private_and_gives_back_its_segment_table(tmp_path):
    store = SnapshotStore(tmp_path)
    path = commit(store, "k1")
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in path.iterdir()} == {0o600}
    snap = store.lookup("k1")
    assert snap.table == parse_segment_table(TABLE_LINES)
    assert snap.note() == "restored from snapshot k1"
    assert store.lookup("other") is None


def test_a_corrupt_state_file_is_dropped_with_a_reason(tmp_path):
    store = SnapshotStore(tmp_path)
    path = commit(store, "k1")
    (path / STATE).write_bytes(b"garbage")
    with pytest.raises(RestoreFailed, match="device state file does not match its recorded digest"):
        store.lookup("k1")
    assert not path.exists()


def test_a_snapshot_of_another_lab_version_or_truncated_ram_is_dropped(tmp_path):
    store = SnapshotStore(tmp_path)
    path = commit(store, "k1")
    os.truncate(path / RAM, MIB)
    with pytest.raises(RestoreFailed, match="RAM file has the wrong size"):
        store.lookup("k1")
    path = commit(store, "k2")
    meta = json.loads((path / META).read_text())
    (path / META).write_text(json.dumps({**meta, "inputs": {"format": 0}}))
    with pytest.raises(RestoreFailed, match="another version"):
        store.lookup("k2")


def test_a_snapshot_whose_kernel_was_rebuilt_or_removed_is_stale_and_others_are_kept(tmp_path):
    store = SnapshotStore(tmp_path / "cache")
    inputs = snapshot_inputs(spec(tmp_path), KERNEL, LOAD, "true")
    first = commit(store, "first", inputs)
    second = commit(store, "second", {**inputs, "load": {**LOAD, "method": "kexec_load"}})
    assert first.exists() and second.exists()  # both can still be hit: both kept
    os.utime(tmp_path / "vmlinuz", ns=(1, 1))  # the bzImage was rebuilt in place
    current = commit(store, "current", snapshot_inputs(spec(tmp_path), KERNEL, LOAD, "true"))
    assert not first.exists() and not second.exists() and current.exists()
    (tmp_path / "initrd").unlink()
    assert store.sweep() == ["current"]


def test_unused_snapshots_and_half_built_ones_of_a_dead_labctl_are_swept(tmp_path):
    store = SnapshotStore(tmp_path)
    unused = commit(store, "unused")
    os.utime(unused / META, (0, 0))
    dead = store.root / ".tmp-k-999999999"
    dead.mkdir()
    (dead / "owner").write_text("999999999")
    mine = store.new_dir("building")
    dropped = store.sweep()
    assert set(dropped) == {"unused", ".tmp-k-999999999"}
    assert mine.exists()


def test_over_its_budget_the_store_drops_the_least_recently_used_never_the_new_one(tmp_path):
    store = SnapshotStore(tmp_path, budget_mib=1)
    chunk = {i * 4096: b"x" * 4096 for i in range(64)}  # 256 KiB held each: 3 fit, 4 do not

    def make(name: str) -> Path:
        tmp = store.new_dir(name)
        (tmp / STATE).write_bytes(b"state")
        sparse_file(tmp / RAM, 4 * MIB, chunk)
        return store.commit(name, tmp, {"inputs": {"format": FORMAT}}).path

    paths = {name: make(name) for name in ("old", "used", "new")}
    assert all(p.exists() for p in paths.values())
    now = time.time()
    os.utime(paths["old"] / META, (now - 300, now - 300))
    os.utime(paths["used"] / META, (now - 200, now - 200))
    store.lookup("old")  # restored just now: now the most recently used
    newest = make("newest")
    assert not paths["used"].exists()
    assert paths["old"].exists() and paths["new"].exists() and newest.exists()


class KnownExpectation:
    """What choose_fork asks of a pair's expectation, as a kernel's catalogue entry would
    answer it (PairExpectation resolves it from the kernel's facts)."""

    def __init__(self, outcome: str | None, then_intact: bool = False):
        self.outcome, self.intact = outcome, then_intact

    def outcome_known_now(self) -> str | None:
        return self.outcome

    def then_intact(self) -> bool:
        return self.intact


def test_the_fork_choice_is_decided_before_any_guest_and_recorded():
    x86 = MachineSpec(Path("k"), Path("i"), "x")
    arm64 = replace(x86, arch="arm64")
    scenario = {n: load_scenario(ROOT / "scenarios" / f"{n}.yaml")
                for n in ("crash-intact", "cpu-hotplug", "load-garbage")}
    intact = KnownExpectation("capture-booted")
    assert choose_fork(scenario["crash-intact"], x86, True, intact) == ForkChoice()  # the loaded guest
    assert choose_fork(scenario["crash-intact"], x86, True, intact).evidence() == {}
    assert choose_fork(scenario["crash-intact"], x86, False, intact).fresh.startswith("--fresh")
    assert "x86_64 guests only" in choose_fork(scenario["crash-intact"], arm64, True, intact).fresh
    assert "hot-adds CPUs" in choose_fork(scenario["cpu-hotplug"], x86, True, intact).evidence()["fresh_boot"]
    assert "garbage image" in choose_fork(scenario["load-garbage"], x86, True, intact).loads_itself
    # on a kernel where the catalogue expects the load to be refused, the load is the question
    refused = choose_fork(scenario["crash-intact"], x86, True, KnownExpectation("load-rejected"))
    assert refused.evidence() == {"loads_on_this_run": "on this kernel the load itself is under test "
                                                       "(expected load-rejected)"}
    then = choose_fork(scenario["crash-intact"], x86, True, KnownExpectation("load-rejected", then_intact=True))
    assert then.loads_itself.endswith(", then an intact crash)")
