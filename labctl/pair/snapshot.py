"""Snapshots of a booted or loaded guest: boot (and load) once, then fork every crash from there.

A snapshot is the guest stopped right after its boot ("booted": for scenarios whose
load is the question, such as a bad image or an expected rejection) or right after a
successful load of the default capture kernel ("loaded": for every scenario that differs
only after the load), saved with QEMU's
migration: with the capability x-ignore-shared the device state (a few hundred KB)
goes to a file and the RAM stays in the memory-backend-file, which the lab copies
into the cache.  Restoring copies that RAM file into the run's private directory
(only its allocated extents: the file is sparse), starts QEMU with `-incoming
defer` and the same options, sets the same capability, migrates the state in, and
`cont`s the guest once the lab is connected to every socket (Machine.launch has
accepted them all before this).  The state file travels as a descriptor passed
over QMP (`fd:` URI), not through `exec:cat`, so no shell is involved.

A snapshot lives in <cache>/snapshots/<key>/ (0700, files 0600); the key is a hash of
everything that shapes the guest at that point: the kernel (package, version or
recipe, and the bzImage file), the primary initramfs, every MachineSpec field, the
load step (none for a booted one) and the QEMU build.  The evidence of the boot and load (the helper's
hello, the load message and segment table, the serial and control logs) is kept
with it and copied into every run restored from it.  A snapshot that cannot be
restored is deleted and the run boots fresh, saying so.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from labctl import stopping
from labctl.config.arch import HOST, get_arch
from labctl.errors import InfraError
from labctl.evidence.segments import Segment, SegmentTable
from labctl.guest.machine import OWNER_FILE, Machine, MachineSpec, owner_gone
from labctl.guest.ramcopy import allocated_bytes, sparse_copy
from labctl.pair.context import PairContext
from labctl.pair.expectation import PairExpectation
from labctl.pair.steps import Loaded, Session, opened_session
from labctl.result import Outcome

FORMAT = 4  # bump when what a snapshot holds or means changes: old ones become stale
RAM, STATE, META = "ram", "state", "snapshot.json"
EVIDENCE_LOGS = ("serial.log", "control.log", "qemu.log")
TMP_PREFIX = ".tmp-"
UNUSED_DAYS = 14  # a snapshot nobody restored for this long is dropped
DEFAULT_BUDGET_MIB = 4096  # lab.yaml's snapshot_cache_mib: the store's size, least recently used out
MIGRATE_SECONDS = 30.0
MIGRATE_POLL = 0.005
CHUNK = 1 << 20
FD_NAME = "snapshot-state"
IGNORE_SHARED = [{"capability": "x-ignore-shared", "state": True}]


class RestoreFailed(InfraError):
    """The snapshot could not be brought back; the run falls back to a fresh boot."""


class SnapshotUnavailable(InfraError):
    """No snapshot can be made because the load was rejected: the scenario's answer
    comes from a fresh boot."""


# ---------------------------------------------------------------- the key

_QEMU_VERSIONS: dict[str, str] = {}


def qemu_version(binary: str) -> str:
    if binary not in _QEMU_VERSIONS:
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        _QEMU_VERSIONS[binary] = (out.splitlines() or ["unknown"])[0]
    return _QEMU_VERSIONS[binary]


def _file_identity(path: Path) -> list:
    st = os.stat(path)
    return [str(path), st.st_size, st.st_mtime_ns]


def snapshot_inputs(spec, kernel: dict, load: dict | None, binary: str) -> dict:
    """Everything that shapes the guest at the moment of the snapshot.  Every field of
    the MachineSpec goes in (fields other issues add are covered without a change here),
    except the debug port, which does not change the guest."""
    machine = {k: str(v) for k, v in dataclasses.asdict(spec).items() if k != "gdb_port"}
    return {"format": FORMAT, "qemu": qemu_version(binary), "machine": machine,
            "kernel_file": _file_identity(spec.kernel), "initrd_file": _file_identity(spec.initrd),
            "kernel": kernel, "load": load}


def snapshot_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


# ---------------------------------------------------------------- the store

@dataclass(frozen=True)
class Snapshot:
    """A saved guest (booted, or booted and loaded) and the evidence of how it got there."""

    key: str
    path: Path
    meta: dict

    @property
    def loaded(self) -> bool:
        """Whether the guest was saved after a load (else right after its boot)."""
        return "load" in self.meta

    @property
    def stage(self) -> str:
        return "loaded" if self.loaded else "booted"

    @property
    def ram(self) -> Path:
        return self.path / RAM

    @property
    def state(self) -> Path:
        return self.path / STATE

    @property
    def table(self) -> SegmentTable:
        data = self.meta["load"]["table"]
        segments = tuple(Segment(index=s["index"], mem=int(s["mem"], 16), memsz=int(s["memsz"], 16),
                                 bufsz=int(s["bufsz"], 16), role=s["role"]) for s in data["segments"])
        entry = data.get("entry")
        return SegmentTable(segments=segments, entry=int(entry, 16) if entry else None)

    def note(self) -> str:
        return f"restored from snapshot {self.key}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


class SnapshotStore:
    """<cache>/snapshots: lookup, one creator at a time per key, staleness, a size budget."""

    def __init__(self, cache_dir: Path, budget_mib: int = DEFAULT_BUDGET_MIB):
        self.budget = budget_mib << 20
        self.root = cache_dir / "snapshots"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    def _dir(self, key: str) -> Path:
        return self.root / key

    def lock(self, key: str):
        """An exclusive lock on one key: parallel runs wait for the first to create it."""
        return _FileLock(self.root / f"{key}.lock")

    def lookup(self, key: str) -> Snapshot | None:
        """The snapshot for key if it is whole and consistent; a broken one is dropped."""
        path = self._dir(key)
        if not path.exists():
            return None
        problem = self._problem(path, key)
        if problem:
            self.drop(key)
            raise RestoreFailed(f"snapshot {key} is unusable ({problem}); dropped it")
        meta = json.loads((path / META).read_text())
        os.utime(path / META)  # last use, for the staleness sweep
        return Snapshot(key, path, meta)

    def _problem(self, path: Path, key: str) -> str | None:
        try:
            meta = json.loads((path / META).read_text())
        except (OSError, ValueError) as exc:
            return f"{META}: {exc}"
        if meta.get("key") != key or meta.get("inputs", {}).get("format") != FORMAT:
            return "written by another version of the lab"
        try:
            if os.path.getsize(path / RAM) != meta["ram_size"]:
                return "RAM file has the wrong size"
            if _sha256(path / STATE) != meta["state_sha256"]:
                return "device state file does not match its recorded digest"
        except OSError as exc:
            return f"{exc.filename}: {exc.strerror}"
        return None

    def drop(self, key: str) -> None:
        shutil.rmtree(self._dir(key), ignore_errors=True)

    def new_dir(self, key: str) -> Path:
        """A private directory to build a snapshot in; it names its owner pid so that
        one left by a killed labctl is swept."""
        path = self.root / f"{TMP_PREFIX}{key}-{os.getpid()}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=0o700)
        (path / OWNER_FILE).write_text(str(os.getpid()))
        return path

    def commit(self, key: str, tmp: Path, meta: dict) -> Snapshot:
        """Publish a finished snapshot atomically and drop the ones it makes stale."""
        for name in os.listdir(tmp):
            os.chmod(tmp / name, 0o600)
        (tmp / OWNER_FILE).unlink()
        meta = {**meta, "key": key, "state_sha256": _sha256(tmp / STATE),
                "ram_size": os.path.getsize(tmp / RAM)}
        fd = os.open(tmp / META, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f, indent=2)
        self.drop(key)
        os.rename(tmp, self._dir(key))
        self.sweep(keep=key)
        return Snapshot(key, self._dir(key), meta)

    def sweep(self, keep: str | None = None) -> list[str]:
        """Drop what is stale: half-built snapshots of a labctl that is gone, snapshots whose
        kernel or initramfs file is gone or was rebuilt (their key can never match again),
        and snapshots nobody restored for UNUSED_DAYS; then, while the rest is over the
        budget, the least recently used (never `keep`, the one just made).  A run that
        had looked one up just before keeps its open copy source; one that had not yet
        opened it falls back to a fresh boot, saying so."""
        dropped = self._sweep_stale(keep)
        kept = []
        for path in self.root.iterdir():
            if path.is_dir() and not path.name.startswith(TMP_PREFIX) and path.name != keep:
                try:
                    kept.append((os.stat(path / META).st_mtime, _bytes_held(path), path))
                except OSError:
                    continue
        total = sum(size for _, size, _ in kept) + (_bytes_held(self._dir(keep)) if keep else 0)
        for _, size, path in sorted(kept, key=lambda entry: entry[0]):
            if total <= self.budget:
                break
            shutil.rmtree(path, ignore_errors=True)
            dropped.append(path.name)
            total -= size
        return dropped

    def _sweep_stale(self, keep: str | None) -> list[str]:
        dropped = []
        now = time.time()
        for path in self.root.iterdir():
            name = path.name
            if name.startswith(TMP_PREFIX):
                if owner_gone(path):
                    shutil.rmtree(path, ignore_errors=True)
                    dropped.append(name)
                continue
            if not path.is_dir() or name == keep:
                continue
            try:
                meta = json.loads((path / META).read_text())
                age = now - os.stat(path / META).st_mtime
            except (OSError, ValueError):
                continue  # being written or broken: lookup drops broken ones
            if _inputs_gone(meta) or age > UNUSED_DAYS * 86400:
                shutil.rmtree(path, ignore_errors=True)
                dropped.append(name)
        return dropped


def _bytes_held(path: Path) -> int:
    """Disk space a snapshot directory holds (its RAM file is sparse)."""
    try:
        return sum(entry.stat().st_blocks * 512 for entry in path.iterdir())
    except OSError:
        return 0


def _inputs_gone(meta: dict) -> bool:
    """Whether the files a snapshot was made from are gone or changed."""
    inputs = meta.get("inputs") or {}
    for identity in (inputs.get("kernel_file"), inputs.get("initrd_file")):
        if not identity:
            continue
        try:
            if _file_identity(Path(identity[0])) != identity:
                return True
        except OSError:
            return True
    return False


class _FileLock:
    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> "_FileLock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock


# ---------------------------------------------------------------- save and restore

def _wait_migration(machine, what: str) -> dict:
    """Poll query-migrate until the migration completed; failed is an InfraError."""
    deadline = time.monotonic() + MIGRATE_SECONDS
    while True:
        stopping.check()
        info = machine.command("query-migrate")
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise InfraError(f"{what} {status}: {info.get('error-desc', 'no reason given')}")
        if time.monotonic() > deadline:
            raise InfraError(f"{what} did not complete within {MIGRATE_SECONDS:g} s (status {status})")
        time.sleep(MIGRATE_POLL)


def _hand_fd(machine, path: Path, flags: int) -> str:
    """Open path and hand the descriptor to QEMU over the QMP socket (SCM_RIGHTS +
    getfd): the migration reads or writes it as `fd:NAME`, with no shell and no
    path on QEMU's side (QEMU 7.2 has no file: URI)."""
    fd = os.open(path, flags, 0o600)
    try:
        machine.qmp.send_fd_scm(fd)
    except OSError as exc:
        raise InfraError(f"could not pass {path.name} to QEMU: {exc.strerror}") from None
    finally:
        os.close(fd)
    machine.command("getfd", fdname=FD_NAME)
    return f"fd:{FD_NAME}"


def save(machine, directory: Path) -> dict:
    """Stop the guest and save it into directory (device state + a copy of its RAM);
    return timings and sizes.  The guest stays stopped."""
    start = time.monotonic()
    machine.command("stop")
    machine.command("migrate-set-capabilities", capabilities=IGNORE_SHARED)
    state = directory / STATE
    machine.command("migrate", uri=_hand_fd(machine, state, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    _wait_migration(machine, "saving the guest (migrate)")
    saved = time.monotonic()
    written = sparse_copy(machine.ram_path, directory / RAM, skip_zeros=True)
    return {"save_state_seconds": round(saved - start, 3),
            "copy_ram_seconds": round(time.monotonic() - saved, 3),
            "state_bytes": os.path.getsize(state), "ram_bytes_written": written,
            "ram_bytes_guest_touched": allocated_bytes(machine.ram_path)}


def restore(machine, snapshot: Snapshot) -> dict:
    """Bring the saved device state into a QEMU started with -incoming defer on a copy
    of the snapshot's RAM, then run the guest.  Any failure is RestoreFailed."""
    start = time.monotonic()
    try:
        machine.command("migrate-set-capabilities", capabilities=IGNORE_SHARED)
        machine.command("migrate-incoming", uri=_hand_fd(machine, snapshot.state, os.O_RDONLY))
        _wait_migration(machine, "restoring the guest (migrate-incoming)")
        status = machine.status()
        if status not in ("paused", "running"):
            raise InfraError(f"the restored guest is {status!r}, not paused")
        if status == "paused":
            machine.command("cont")
    except InfraError as exc:
        raise RestoreFailed(f"snapshot {snapshot.key}: {exc}") from None
    return {"incoming_seconds": round(time.monotonic() - start, 3)}


# ---------------------------------------------------------------- forking pairs

def machine_fresh_reason(spec) -> str | None:
    """Why this machine boots fresh whatever the scenario: snapshots are verified on the
    x86_64 guests only (arm64's console relay and virtio control port are not)."""
    if spec.arch != HOST.name:
        return f"snapshots are verified on {HOST.name} guests only, not {spec.arch}"
    return None


def fresh_reason(scenario) -> str | None:
    """Why a scenario cannot fork from any snapshot, or None: CPU or memory hotplug, which
    is not verified on a restored guest."""
    if getattr(scenario, "hotplug", None):
        return "hot-adds CPUs or memory: hotplug into a restored guest is not verified"
    return None


def load_reason(scenario) -> str | None:
    """Why a scenario forks from the snapshot of a booted guest and loads on its own run,
    or None: it can fork from the loaded one.

    Loaded: every scenario that loads the default capture kernel and then crashes
    (corrupt or not, any trigger, unload first or not); they differ only after the
    load.  Booted: another image (bad or signed kinds) or a load that is the question
    itself (trigger none, then_intact), whose answer is the load on this very run."""
    if scenario.load.kernel != "default":
        return f"loads the {scenario.load.kernel} image, not the default one loaded snapshots hold"
    if scenario.trigger == "none" or scenario.then_intact:
        return "stops after the load: the load itself is under test"
    if scenario.trigger == "kexec-reboot":
        return "a kexec reboot's load carries this run's own token on its command line"
    return None


@dataclass(frozen=True)
class ForkChoice:
    """What one pair forks from, decided before any guest starts: nothing (`fresh` says
    why it boots cold), the booted guest (`loads_itself` says why the load must be this
    run's own), or the loaded guest (both None).  `evidence` is result.json's record."""

    fresh: str | None = None
    loads_itself: str | None = None

    def evidence(self) -> dict:
        if self.fresh:
            return {"fresh_boot": self.fresh}
        return {"loads_on_this_run": self.loads_itself} if self.loads_itself else {}


def choose_fork(scenario, spec, snapshots: bool, expectation: PairExpectation) -> ForkChoice:
    """The fork for a pair: the scenario's and the machine's reasons to boot fresh, then
    whether the load is under test here (the scenario says so, or on this kernel the
    expected outcome is a rejected load, or a rejection followed by an intact crash)."""
    if not snapshots:
        return ForkChoice(fresh="--fresh (or a caller that boots fresh)")
    if why := fresh_reason(scenario) or machine_fresh_reason(spec):
        return ForkChoice(fresh=why)
    if why := load_reason(scenario):
        return ForkChoice(loads_itself=why)
    expected, then_intact = expectation.outcome_known_now(), expectation.then_intact()
    if expected == Outcome.LOAD_REJECTED or then_intact:
        return ForkChoice(loads_itself=f"on this kernel the load itself is under test (expected {expected}"
                          + (", then an intact crash)" if then_intact else ")"))
    return ForkChoice()


@contextmanager
def launched(spec, qemu_log: Path, snap: Snapshot | None):
    """A running Machine (a fresh boot, or waiting for a snapshot's state); a failure to
    start on a snapshot's RAM is RestoreFailed, so that the run boots fresh instead."""
    machine = Machine(spec, qemu_log, ram_source=snap.ram if snap else None)
    try:
        machine.launch()
    except (InfraError, OSError) as exc:
        machine.shutdown()
        if snap is None:
            raise
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RestoreFailed(f"snapshot {snap.key}: starting QEMU on its RAM failed: {why}") from None
    except BaseException:
        machine.shutdown()
        raise
    try:
        yield machine
    finally:
        machine.shutdown()


def obtain(pair: PairContext, spec: MachineSpec, load: dict | None, t0: float, out: Path | None = None) -> Snapshot:
    """The snapshot for this pair's kernel, machine and load step (None: of the booted
    guest), created if missing (one creator per key; parallel runs wait for it).  A broken
    one is RestoreFailed."""
    store = SnapshotStore(pair.lab.cache_dir, pair.lab.snapshot_cache_mib)
    inputs = snapshot_inputs(spec, pair.kernel.describe(), load, get_arch(spec.arch).qemu_binary)
    key = snapshot_key(inputs)
    with store.lock(key):
        snap = store.lookup(key)
        if snap is None:
            snap = create(pair, store, key, inputs, spec, t0, out)
    return snap


def create(pair: PairContext, store: SnapshotStore, key: str, inputs: dict, spec: MachineSpec, t0: float,
           out: Path | None = None) -> Snapshot:
    """Boot and, if the key has a load step, load once (the pair's own steps), save the
    stopped guest, publish it.

    A boot or load that fails here is the pair's own infrastructure error (a fresh boot
    would only repeat it), with the logs in `out`; a rejected load is SnapshotUnavailable:
    the scenario's answer then comes from a fresh boot."""
    tmp = store.new_dir(key)
    with_load = inputs["load"] is not None
    pair.progress.say(f"creating snapshot {key}: boot{' and load' if with_load else ''} once, then save")
    try:
        with Machine(spec, tmp / "qemu.log") as machine, \
                opened_session(machine, tmp, t0, pair.lab.timeouts, pair.progress) as session:
            pair.session = session
            hello = pair.step_boot(session)
            loaded = pair.step_load(session) if with_load else None
            if loaded is not None and loaded.rejected:
                raise SnapshotUnavailable(f"no snapshot: the load was rejected "
                                          f"(rc {loaded.message.get('rc')}, "
                                          f"{loaded.message.get('strerror')})")
            session.phase = "saving a snapshot"
            pair.progress.say(f"saving snapshot {key}")
            figures = save(machine, tmp)
        meta = {"inputs": inputs,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "primary": pair.evidence["primary"], "hello": hello,
                "timings": dict(session.timings), "save": figures}
        if loaded is not None:
            meta["load"] = {"message": loaded.message, "table": loaded.table.to_json(),
                            "evidence": pair.evidence.pop("load")}
        snap = store.commit(key, tmp, meta)
        pair.session = None  # the pair's own run starts a session of its own
        pair.progress.say(f"snapshot {key} saved: state {figures['state_bytes'] >> 10} KiB in "
                          f"{figures['save_state_seconds']:.2f} s, RAM {figures['ram_bytes_written'] >> 20} MiB "
                          f"in {figures['copy_ram_seconds']:.2f} s")
        return snap
    except BaseException:
        if out is not None:  # this boot is the pair's evidence: keep its logs
            for name in EVIDENCE_LOGS:
                if (tmp / name).exists():
                    shutil.copyfile(tmp / name, out / name)
        raise
    finally:  # an interruption keeps pair.session: its phase says where it stopped
        shutil.rmtree(tmp, ignore_errors=True)  # gone already if it was committed


def restore_pair(pair: PairContext, session: Session, snap: Snapshot, started: float,
                 out: Path) -> tuple[dict, Loaded | None]:
    """Run a restored guest and give the pair the boot (and load) evidence of its snapshot,
    marked as such; return the helper's hello from that boot and the Loaded the scenario
    goes on from (None for a booted snapshot: the pair loads on its own)."""
    session.phase = "restoring"
    pair.progress.say(f"restoring snapshot {snap.key}")
    figures = restore(session.machine, snap)
    assert session.machine.ram_path is not None, "launched"
    session.primary = meta_hello = snap.meta["hello"]  # what Session.boot keeps of the boot
    session.timings["restore"] = round(time.monotonic() - started, 3)
    note = snap.note()
    meta = snap.meta
    pair.evidence["primary"] = {**meta["primary"], "source": note}
    if snap.loaded:
        pair.evidence["load"] = {**meta["load"]["evidence"], "source": note}
    pair.evidence["snapshot"] = {
        **pair.evidence.get("snapshot", {}),
        "key": snap.key, "note": note, "stage": snap.stage, "created_at": meta["created_at"],
        "snapshot_boot_seconds": meta["timings"].get("boot"),
        "snapshot_load_seconds": meta["timings"].get("load"),
        "ram_copy_seconds": session.machine.ram_copy_seconds,
        "ram_bytes": allocated_bytes(session.machine.ram_path), **figures,
        "logs": {}}
    for name in EVIDENCE_LOGS:
        if (snap.path / name).exists():
            shutil.copyfile(snap.path / name, out / f"snapshot-{name}")
            pair.evidence["snapshot"]["logs"][name] = f"snapshot-{name}"
    pair.progress.say(f"restored in {session.timings['restore']:.2f} s ({note}, {snap.stage})")
    if not snap.loaded:
        return meta_hello, None
    session.token = meta["load"]["message"].get("capture_token")  # on the loaded command line
    session.tool_output = meta["load"]["message"].get("output", [])
    return meta_hello, Loaded(message=meta["load"]["message"], table=snap.table)
