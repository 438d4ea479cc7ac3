"""Faults caused for real, and what the lab must do about each.

Signals go to the real `labctl run` process at the moment its progress line
names the phase; QEMU is killed from outside; the kernel is a real garbage or
broken bzImage; the artifacts directory is a real read-only bind mount or a full
tmpfs; the guest's own console shell makes the control channel send garbage, an
oversized line or nothing.  After each: no QEMU, RAM file, socket or run
directory is left (conftest's no_leaks, and the run's own QEMU pid and run dir).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import ROOT, labctl
from labctl.config.schema import load_lab, load_scenario
from labctl.errors import InfraError
from labctl.guest.accel import AccelChooser
from labctl.guest.assets import build_assets
from labctl.guest.control import ProtocolError
from labctl.guest.machine import Machine, MachineSpec, RunDir
from labctl.kernel.providers import resolve_kernel
from labctl.pair.runner import PairRun
from labctl.progress import Progress

pytestmark = pytest.mark.e2e

KERNEL = "debian-6.12"
PROMPT_EXIT = 10.0  # seconds from the signal to labctl's exit (QEMU gets 3 s to quit)


def process_children(pid: int) -> dict[int, str]:
    """pid -> command name of the processes whose parent is pid."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            name, rest = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        if int(rest.split()[1]) == pid:
            found[int(entry)] = name.split("(", 1)[1]
    return found


def running(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class LiveRun:
    """A real `labctl run` in the background; its stderr is read as it comes to time a fault."""

    def __init__(self, *args: str, group: bool = False, fresh: bool = True, lab: Path | None = None):
        # SIGINT back to the default, so Python installs its handler even when this
        # suite itself was started in the background (where SIGINT is ignored).
        # fresh: boot cold, so that every phase of a boot and load is there to hit.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "labctl", *(["--lab", str(lab)] if lab else []), "run", *args,
             *(["--fresh"] if fresh else [])], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=group,
            preexec_fn=None if group else lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.stderr = ""

    def wait_for(self, text: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            ready, _, _ = select.select([self.proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no {text!r} within {timeout} s:\n{self.stderr}"
            chunk = os.read(self.proc.stderr.fileno(), 65536)
            assert chunk, f"labctl ended before {text!r}:\n{self.stderr}"
            self.stderr += chunk.decode(errors="replace")

    def qemu(self) -> tuple[int, Path]:
        """The pid of this run's QEMU and its run directory (from its mem-path=)."""
        pids = [p for p, name in process_children(self.proc.pid).items() if name.startswith("qemu-system")]
        assert len(pids) == 1, process_children(self.proc.pid)
        argv = Path(f"/proc/{pids[0]}/cmdline").read_bytes().decode().split("\0")
        ram = next(a for a in argv if "mem-path=" in a).split("mem-path=")[1].split(",")[0]
        return pids[0], Path(ram).parent

    def finish(self, timeout: float = 120) -> tuple[int, str, float]:
        """(exit code, stdout, seconds it took to exit)."""
        start = time.monotonic()
        out, err = self.proc.communicate(timeout=timeout)
        self.stderr += err.decode(errors="replace")
        return self.proc.returncode, out.decode(), time.monotonic() - start

    def result(self, stdout: str) -> dict:
        """The pair's result.json: from the summary, or from the interruption message."""
        found = re.search(r"^  artifacts: (.+)$", stdout, re.M) or \
            re.search(r"partial results in (.+)$", self.stderr, re.M)
        assert found, stdout + self.stderr
        result = json.loads((Path(found.group(1)) / "result.json").read_text())
        result["_dir"] = Path(found.group(1))
        return result


def assert_gone(pid: int, rundir: Path) -> None:
    assert not running(pid), f"QEMU {pid} outlived labctl"
    assert not rundir.exists(), f"{rundir} (RAM file, sockets) was left behind"


# ------------------------------------------------------------ signals in every phase

# (progress text to wait for, phases the interruption may be recorded in).  The lab never
# idles between the load and the corruption (microseconds apart), so "loaded" is hit while
# the load is in flight and "after corruption" while the panic is being triggered.
PHASES = [
    ("booting the primary kernel", {"booting"}),
    ("loading the capture kernel", {"loading"}),
    ("corrupted ", {"corrupting", "panicking", "observing"}),
    ("triggering a panic", {"panicking", "observing"}),
]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("text,phases", PHASES, ids=["booting", "loading", "corrupted", "panicked"])
def test_a_signal_in_any_phase_stops_cleanly(no_leaks, signum, text, phases):
    run = LiveRun("crash-corrupt", "--kernel", KERNEL)
    run.wait_for(text)
    pid, rundir = run.qemu()
    os.kill(run.proc.pid, signum)
    code, stdout, took = run.finish()
    assert code == 130, run.stderr
    assert took < PROMPT_EXIT, f"took {took:.1f} s to exit"
    result = run.result(stdout)
    assert result["outcome"] == "interrupted" and result["phase"] in phases, result
    assert result["reason"] == f"interrupted while {result['phase']}"
    assert "labctl: interrupted" in run.stderr
    assert_gone(pid, rundir)


def test_a_second_sigint_while_stopping_still_leaves_nothing(no_leaks):
    """An impatient second Ctrl-C lands while the lab is stopping QEMU."""
    run = LiveRun("crash-corrupt", "--kernel", KERNEL)
    run.wait_for("loading the capture kernel")
    pid, rundir = run.qemu()
    os.kill(run.proc.pid, signal.SIGINT)
    time.sleep(0.05)
    os.kill(run.proc.pid, signal.SIGINT)
    code, stdout, took = run.finish()
    assert code == 130 and took < PROMPT_EXIT, (code, took, run.stderr)
    assert run.result(stdout)["outcome"] == "interrupted"
    assert_gone(pid, rundir)


def test_ctrl_c_at_a_terminal_stops_cleanly(no_leaks):
    """A terminal's Ctrl-C signals labctl's process group; QEMU runs in its own, so the lab
    (not the signal) stops it."""
    run = LiveRun("crash-corrupt", "--kernel", KERNEL, group=True)
    run.wait_for("triggering a panic")
    pid, rundir = run.qemu()
    os.killpg(run.proc.pid, signal.SIGINT)
    code, stdout, took = run.finish()
    assert code in (130, 3), run.stderr  # the lab may see QEMU go first
    assert took < PROMPT_EXIT
    assert run.result(stdout)["outcome"] in ("interrupted", "infra-error")
    assert_gone(pid, rundir)


def test_qemu_frozen_then_sigterm_still_exits_promptly(no_leaks):
    """A QEMU that no longer answers QMP (SIGSTOP) must not make labctl hang on the way out."""
    run = LiveRun("crash-corrupt", "--kernel", KERNEL)
    run.wait_for("loading the capture kernel")
    pid, rundir = run.qemu()
    os.kill(pid, signal.SIGSTOP)
    os.kill(run.proc.pid, signal.SIGTERM)
    code, stdout, took = run.finish()
    assert code == 130 and took < PROMPT_EXIT, (code, took, run.stderr)
    assert run.result(stdout)["phase"] == "loading"
    assert_gone(pid, rundir)


def test_labctl_killed_outright_takes_qemu_and_the_next_run_sweeps_its_run_dir(no_leaks):
    """SIGKILL leaves labctl no chance to clean up: QEMU dies with it (PR_SET_PDEATHSIG), and
    the run directory, whose owner is gone, is removed by the next run directory made."""
    run = LiveRun("crash-corrupt", "--kernel", KERNEL)
    run.wait_for("loading the capture kernel")
    pid, rundir = run.qemu()
    run.proc.kill()
    run.finish()
    deadline = time.monotonic() + 10
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(pid) and (rundir / "guest-ram").exists()  # the state a SIGKILL leaves
    RunDir().close()
    assert not rundir.exists()


# ------------------------------------------------------------ QEMU and kernel faults

@pytest.mark.parametrize("text,phase", [("loading the capture kernel", "loading"),
                                        ("triggering a panic", "observing")], ids=["loading", "panicked"])
def test_qemu_killed_from_outside_is_an_infra_error_naming_the_signal(no_leaks, text, phase):
    """Not a verdict: after the panic, QEMU killed from outside is no guest reset."""
    run = LiveRun("crash-corrupt", "--kernel", KERNEL)
    run.wait_for(text)
    pid, rundir = run.qemu()
    if phase == "observing":
        time.sleep(0.3)  # the lab is watching for a verdict
    os.kill(pid, signal.SIGKILL)
    code, stdout, took = run.finish()
    assert code == 3 and took < PROMPT_EXIT, run.stderr
    result = run.result(stdout)
    assert result["outcome"] == "infra-error" and result["phase"] == phase, result
    assert f"QEMU was killed by SIGKILL while {phase}" in result["reason"]
    serial = (result["_dir"] / "serial.log").read_text()
    assert "Linux version" in serial and "kexec-lab: guest ready" in serial  # the log so far is kept
    assert_gone(pid, rundir)


@pytest.fixture(scope="module")
def broken_lab(tmp_path_factory):
    """A lab with a short boot deadline and broken kernels: garbage, a corrupt payload
    behind a valid header, and a good kernel told it has 40 MiB."""
    tmp_path = tmp_path_factory.mktemp("broken-lab")
    bzimage = resolve_kernel(load_lab(ROOT / "lab.yaml"), KERNEL, progress=lambda _: None).bzimage
    good = bzimage.read_bytes()
    (tmp_path / "garbage").write_bytes(os.urandom(len(good)))
    payload = bytearray(good)
    payload[len(good) // 4:-4096] = os.urandom(len(good) - 4096 - len(good) // 4)
    (tmp_path / "bad-payload").write_bytes(bytes(payload))
    (tmp_path / "lab.yaml").write_text(f"""\
default_kernel: garbage
timeouts: {{boot: 15, load: 30, verdict: 30}}
artifacts_dir: {tmp_path / "artifacts"}
kernels:
  garbage: {{path: garbage}}
  bad-payload: {{path: bad-payload}}
""")
    (tmp_path / "lowmem.yaml").write_text((tmp_path / "lab.yaml").read_text().replace(
        "kernels:", f"machine: {{cmdline: mem=40M}}\nkernels:\n  lowmem: {{path: {bzimage}}}"))
    return tmp_path


@pytest.mark.parametrize("lab_file,kernel,reason", [
    ("lab.yaml", "garbage", "QEMU exited with status 1: qemu: linux kernel too old"),
    ("lab.yaml", "bad-payload", "QEMU exited with status 0 (the guest reset or powered off) while booting"),
    ("lowmem.yaml", "lowmem", "the guest did not reach init within 15 s"),
], ids=["garbage-bzImage", "corrupt-payload", "too-little-memory"])
def test_a_guest_that_never_reaches_init_fails_within_the_boot_deadline(no_leaks, broken_lab, lab_file,
                                                                        kernel, reason):
    start = time.monotonic()
    run = labctl("--lab", str(broken_lab / lab_file), "run", str(ROOT / "scenarios" / "crash-intact.yaml"),
                 "--kernel", kernel, timeout=60)
    took = time.monotonic() - start
    assert run.returncode == 3, run.stdout + run.stderr
    assert took < 15 + 15, f"{took:.0f} s: past the boot deadline"
    result = next(iter(run.results.values()))
    assert result["outcome"] == "infra-error"
    assert reason in result["reason"], result["reason"]


def test_an_offset_past_the_segment_is_exit_2_naming_file_line_and_key(no_leaks, tmp_path):
    """Segment sizes are only known once the kernel has loaded them: the guest is stopped and
    the error still points into the scenario file."""
    scenario = tmp_path / "past-the-end.yaml"
    scenario.write_text("expect: purgatory-refused\ncorrupt:\n  segment: kernel\n  offset: 0x10000000\n")
    run = labctl("run", str(scenario), "--kernel", KERNEL, timeout=300)
    assert run.returncode == 2, run.stdout + run.stderr
    result = run.results["past-the-end"]
    assert result["outcome"] == "config-error"
    assert result["reason"].startswith(f"{scenario}:4: key 'corrupt.offset': corrupt: offset 0x10000000 "
                                       "+ length 0x10 is outside the kernel segment"), result["reason"]


# ------------------------------------------------------------ the control channel, from a real guest

class TypeAfterBoot(Progress):
    """Progress that types one command into the guest's console shell once it has booted."""

    def __init__(self, command: str):
        super().__init__("fault", quiet=True)
        self.command = command
        self.pair: PairRun | None = None

    def say(self, text: str) -> None:
        super().say(text)
        if text.startswith("booted "):
            self.pair.session.console.send(self.command + "\n")


def run_with_guest_command(tmp_path: Path, command: str, load_timeout: float = 60) -> InfraError:
    """Run crash-intact in this process with `command` typed into the guest; return the error."""
    lab = load_lab(ROOT / "lab.yaml")
    lab = replace(lab, timeouts=replace(lab.timeouts, load=load_timeout))
    kernel = resolve_kernel(lab, KERNEL, progress=lambda _: None)
    progress = TypeAfterBoot(command)
    pair = progress.pair = PairRun(lab, kernel, load_scenario(ROOT / "scenarios" / "crash-intact.yaml"),
                                   AccelChooser(lab.cache_dir), progress)
    with pytest.raises(InfraError) as err:
        pair.run(tmp_path, time.monotonic())
    assert not pair.session.machine.alive() and pair.session.machine.rundir is None
    return err.value


@pytest.mark.parametrize("command,error,message", [
    ("echo 'garbage {not json' > /dev/ttyS1", ProtocolError, "control channel: not JSON"),
    # the helper stopped first, so that none of its own newlines cuts the flood short
    ("kill -STOP $(pidof kexec-lab-helper); dd if=/dev/zero bs=4096 count=640 2>/dev/null"
     " | tr '\\0' x > /dev/ttyS1", ProtocolError,
     "control channel: a line longer than"),
    ("kill -STOP $(pidof kexec-lab-helper)", InfraError, "timed out after 8 s waiting for the load"),
], ids=["garbage", "oversized", "silent"])
def test_the_control_channel_misbehaving_is_a_clear_error(no_leaks, tmp_path, command, error, message):
    exc = run_with_guest_command(tmp_path, command, load_timeout=60 if "dd" in command else 8)
    assert type(exc) is error and message in str(exc), str(exc)
    assert "> load " in (tmp_path / "control.log").read_text()


# ------------------------------------------------------------ artifacts disk

@pytest.fixture
def mounted(tmp_path):
    """Mount points made for the test and unmounted after it, whatever happens."""
    mounts = []

    def mount(*argv: str) -> None:
        subprocess.run(["mount", *argv], check=True, capture_output=True)
        mounts.append(argv[-1])

    yield mount
    for point in reversed(mounts):
        subprocess.run(["umount", point], check=False, capture_output=True)


def read_only_dir(tmp_path: Path, mount) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "ro").mkdir()
    mount("--bind", str(tmp_path / "src"), str(tmp_path / "ro"))
    mount("-o", "remount,bind,ro", str(tmp_path / "ro"))
    return tmp_path / "ro"


def full_dir(tmp_path: Path, mount) -> Path:
    (tmp_path / "full").mkdir()
    mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tmp_path / "full"))
    with open(tmp_path / "full" / "filler", "wb") as f:
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    return tmp_path / "full"


def small_dir(tmp_path: Path, mount) -> Path:
    (tmp_path / "small").mkdir()
    mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(tmp_path / "small"))
    return tmp_path / "small"


@pytest.mark.parametrize("make,message", [
    (read_only_dir, "is not writable (Read-only file system)"),
    (full_dir, "is not writable (No space left on device)"),
    (small_dir, "has only 16 MiB free (need 64 MiB)"),
], ids=["read-only", "full", "nearly-full"])
def test_artifacts_disk_unusable_is_a_clear_error_before_qemu(no_leaks, tmp_path, mounted, make, message):
    target = make(tmp_path, mounted) / "artifacts"
    run = labctl("run", "crash-intact", "--kernel", KERNEL, "--artifacts", str(target), timeout=60)
    assert run.returncode == 3, run.stderr
    assert f"labctl: infrastructure error: artifacts directory {target}" in run.stderr
    assert message in run.stderr and "booting" not in run.stderr


def test_artifacts_disk_filling_during_the_run_is_an_infra_error(no_leaks, tmp_path, mounted):
    """Enough space at the start, none once the guest boots: exit 3 saying what could not be
    kept, never a traceback with exit 1 (which would read as a failed expectation)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted("-t", "tmpfs", "-o", "size=70m", "tmpfs", str(disk))
    run = LiveRun("crash-corrupt", "--kernel", KERNEL, "--artifacts", str(disk / "artifacts"))
    run.wait_for("booting the primary kernel")
    pid, rundir = run.qemu()
    with open(disk / "filler", "wb") as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * (1 << 20))
            f.flush()
    code, _, took = run.finish()
    assert code == 3 and took < 120, run.stderr
    assert "labctl: infrastructure error: could not write " in run.stderr
    assert "result.json: No space left on device" in run.stderr and "Traceback" not in run.stderr
    assert_gone(pid, rundir)


# ------------------------------------------------------------ two runs at once

def test_two_runs_of_one_scenario_at_once_share_nothing(no_leaks):
    runs = [LiveRun("crash-corrupt", "--kernel", KERNEL) for _ in range(2)]
    for run in runs:
        run.wait_for("booting the primary kernel")
    qemus = [run.qemu() for run in runs]
    sockets = [sorted(p.name for p in rundir.iterdir()) for _, rundir in qemus]
    assert qemus[0][1] != qemus[1][1] and sockets[0] == sockets[1]  # same layout, separate dirs
    assert {"guest-ram", "console.sock", "control.sock"} <= set(sockets[0])
    finished = [run.finish(timeout=300) for run in runs]
    assert [code for code, _, _ in finished] == [0, 0], [run.stderr for run in runs]
    dirs = [run.result(stdout)["_dir"] for run, (_, stdout, _) in zip(runs, finished, strict=True)]
    assert dirs[0] != dirs[1] and all(d.exists() for d in dirs)
    for pid, rundir in qemus:
        assert_gone(pid, rundir)


# ------------------------------------------------------------ security, on a live QEMU

def tcp_listeners(pid: int) -> list[str]:
    """Local addresses (hex ip:port from /proc/net/tcp*) of the sockets pid listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1])
    return found


def test_a_live_guest_is_private_and_listens_on_loopback_only(no_leaks, tmp_path):
    lab = load_lab(ROOT / "lab.yaml")
    kernel = resolve_kernel(lab, KERNEL, progress=lambda _: None)
    assets = build_assets(lab.cache_dir, kernel.bzimage)
    spec = MachineSpec(kernel=kernel.bzimage, initrd=assets.primary_initramfs, cmdline="console=ttyS0",
                       gdb_port=free_port(), memory_mib=256)
    with Machine(spec, tmp_path / "qemu.log") as machine:
        rundir = machine.rundir.path
        assert stat.S_IMODE(rundir.stat().st_mode) == 0o700
        assert stat.S_IMODE(machine.ram_path.stat().st_mode) == 0o600
        assert machine.ram_path.stat().st_size == 256 << 20
        listeners = tcp_listeners(machine.proc.pid)
        assert listeners and all(a.startswith("0100007F:") for a in listeners), listeners  # 127.0.0.1
        assert all(stat.S_ISSOCK(p.stat().st_mode) for p in rundir.glob("*.sock"))
    assert not rundir.exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
