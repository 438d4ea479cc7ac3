"""The QEMU guest: command line, launch, channels, and a shutdown that always cleans up.

Modelled on QEMU's own python/qemu/machine: a context manager whose exit
path runs however the run ends.  The lab listens on three Unix sockets in a
private 0700 run directory (console, control, QMP) and QEMU connects to them,
so there is no race on start-up.  Guest RAM is a file in the same directory
(memory-backend-file, share=on) that the host maps to read and write guest
physical memory.  QEMU gets SIGKILL if the lab itself dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from qemu.qmp import ExecuteError, QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from labctl import stopping
from labctl.config.arch import HOST, get_arch
from labctl.errors import InfraError, Interrupted
from labctl.guest.ramcopy import sparse_copy
from labctl.guest.relay import relay

PR_SET_PDEATHSIG = 1
OWNER_FILE = "owner"  # in a run directory: the pid of the labctl that made it
QMP_SECONDS = 10.0  # a QMP command QEMU does not answer in this time: QEMU is stuck
QUIT_SECONDS = 2.0  # on the way out, a stuck QEMU is killed rather than waited for


@dataclass(frozen=True)
class MachineSpec:
    """Everything that decides the QEMU command line."""

    kernel: Path
    initrd: Path
    cmdline: str
    accel: str = "tcg"  # resolved: kvm | tcg
    machine_type: str = "pc"
    memory_mib: int = 1024
    smp: int = 1
    maxcpus: int | None = None  # > smp: room to hot-add CPUs (QMP device_add)
    hotplug_memory_mib: int = 0  # room for one DIMM (pc-dimm) hot-added above the RAM
    tcg_threads: str = "multi"
    gdb_port: int | None = None
    arch: str = HOST.name  # labctl/config/arch.py: binary, machine, ports
    drives: tuple[str, ...] = ()  # -drive values (userland debian: root disk, /var/crash disk)


class RunDir:
    """A private (0700) directory for sockets and the RAM file, removed on close.

    It names the labctl process that owns it, so that the next run can remove the
    directories of a labctl that was killed outright (SIGKILL, OOM) and could not."""

    def __init__(self) -> None:
        base = Path("/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir())
        sweep_stale_run_dirs(base)
        self.path = Path(tempfile.mkdtemp(prefix="kexec-lab-", dir=base))
        os.chmod(self.path, 0o700)
        (self.path / OWNER_FILE).write_text(str(os.getpid()))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def owner_gone(directory: Path) -> bool:
    """Whether the labctl that made a run directory no longer runs.  No owner file (being
    created right now, or made by another tool) and a live pid both mean: keep it."""
    try:
        pid = int((directory / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return not Path(f"/proc/{pid}").exists()


def sweep_stale_run_dirs(base: Path) -> list[Path]:
    """Remove this user's run directories whose labctl is gone: a 1 GiB RAM file in
    /dev/shm would otherwise hold the host's memory until reboot."""
    swept = []
    for directory in base.glob("kexec-lab-*"):
        try:
            mine = directory.is_dir() and directory.stat().st_uid == os.getuid()
        except OSError:
            continue
        if mine and owner_gone(directory):
            shutil.rmtree(directory, ignore_errors=True)
            swept.append(directory)
    return swept


def _control_port(virtio: bool) -> list[str]:
    """The control channel: a second UART, or a virtio-console port (hvc0) where the
    machine has only one UART (aarch64 and riscv64 virt in QEMU 7.2)."""
    if virtio:
        return ["-device", "virtio-serial-device", "-device", "virtconsole,chardev=control"]
    return ["-serial", "chardev:control"]


def qemu_argv(spec: MachineSpec, ram: Path, console: Path, control: Path, qmp: Path,
              binary: str | None = None, incoming: bool = False) -> list[str]:
    """The QEMU command line for a spec; pure, so a golden test can pin it."""
    target = get_arch(spec.arch)
    if spec.accel == "kvm":
        accel = ["-accel", "kvm", "-cpu", "host"]
    else:
        accel = ["-accel", f"tcg,thread={spec.tcg_threads}", "-cpu", target.cpu_tcg]
        if spec.maxcpus and spec.maxcpus > spec.smp and target is HOST:
            accel = accel[:-1] + x86_tcg_cpu_hotplug_args()
    machine_type = spec.machine_type if target is HOST else target.machine
    argv = [
        binary or target.qemu_binary, *accel, *target.extra_qemu,
        "-machine", f"{machine_type},memory-backend=ram",
        "-object", f"memory-backend-file,id=ram,size={spec.memory_mib}M,mem-path={ram},share=on",
        "-m", f"{spec.memory_mib}M" + (f",slots=1,maxmem={spec.memory_mib + spec.hotplug_memory_mib}M"
                                       if spec.hotplug_memory_mib else ""),
        "-smp", _smp(spec),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(spec.kernel), "-initrd", str(spec.initrd), "-append", spec.cmdline,
        *(arg for drive in spec.drives for arg in ("-drive", drive)),
        "-chardev", f"socket,id=console,path={console}",
        "-serial", "chardev:console",
        "-chardev", f"socket,id=control,path={control}",
        *_control_port(target.virtio_control),
        "-chardev", f"socket,id=qmp,path={qmp}",
        "-mon", "chardev=qmp,mode=control",
    ]
    if spec.gdb_port is not None:
        argv += ["-gdb", f"tcp:127.0.0.1:{spec.gdb_port}"]
    if incoming:  # a snapshot's device state comes later, through QMP migrate-incoming
        argv += ["-incoming", "defer"]
    return argv


def x86_tcg_cpu_hotplug_args() -> list[str]:
    """-cpu and platform arguments that let an x86 guest under TCG accept hot-added CPUs.

    QEMU lists the CPUs that may be plugged later as MADT LAPIC entries with Enabled=0.
    Linux 6.12 counts those only when it detects a hypervisor (arch/x86/kernel/acpi/boot.c:
    acpi_is_processor_usable); under TCG it detects none ("Allowing 1 present CPUs plus 0
    hotplug CPUs") and a hot-added CPU gets "ACPI: Unable to map lapic to logical cpu
    number".  The one detection QEMU 7.2 can satisfy under TCG is VMware's without the
    CPUID hypervisor bit: a DMI serial starting "VMware" and an answer on the backdoor port
    (arch/x86/kernel/cpu/vmware.c: vmware_platform; QEMU's vmport device, on by default
    on `pc` under TCG).  Under KVM the KVM signature does it and none of this is needed."""
    return ["max,-hypervisor", "-smbios", "type=1,serial=VMware-kexec-lab-cpu-hotplug"]


def _smp(spec: MachineSpec) -> str:
    """-smp N, with maxcpus only when there is room to hot-add."""
    if spec.maxcpus and spec.maxcpus > spec.smp:
        return f"{spec.smp},maxcpus={spec.maxcpus}"
    return str(spec.smp)


def _die_with_parent() -> None:
    """Runs in the child before exec: QEMU must not outlive the lab."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    return sock


class Machine:
    """One running guest.  Use as a context manager; exit always cleans up."""

    def __init__(self, spec: MachineSpec, qemu_log: Path, binary: str | None = None,
                 ram_source: Path | None = None):
        self.spec = spec
        self.ram_source = ram_source  # a snapshot's RAM: copied, and QEMU waits for its state
        self.qemu_log = qemu_log
        self.arch = get_arch(spec.arch)
        self.binary = binary or self.arch.qemu_binary
        self.rundir: RunDir | None = None
        self.proc: subprocess.Popen | None = None
        self.console: socket.socket | None = None
        self.control: socket.socket | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self.ram_path: Path | None = None
        self.started = 0.0
        self.ram_copy_seconds: float | None = None

    # -------------------------------------------------------------- launch
    def __enter__(self) -> "Machine":
        try:
            self.launch()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def _make_ram_file(self) -> Path:
        assert self.rundir is not None, "the run dir comes first"
        path = self.rundir / "guest-ram"
        if self.ram_source is not None:
            start = time.monotonic()
            sparse_copy(self.ram_source, path)
            self.ram_copy_seconds = round(time.monotonic() - start, 3)
            return path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, self.spec.memory_mib << 20)
        finally:
            os.close(fd)
        return path

    def launch(self) -> None:
        binary = shutil.which(self.binary)
        if not binary:
            package = self.arch.qemu_package
            raise InfraError(f"{self.binary} not found: install {package} "
                             f"(apt-get install --no-install-recommends {package})")
        with stopping.deferred():  # the directory is ours to remove as soon as it exists
            self.rundir = RunDir()
        self.ram_path = self._make_ram_file()
        paths = {name: self.rundir / f"{name}.sock" for name in ("console", "control", "qmp")}
        listeners = {name: _listen(paths[name]) for name in ("console", "control")}
        with stopping.foreign_loop():
            self.qmp = QEMUMonitorProtocol(str(paths["qmp"]), server=True)
        argv = qemu_argv(self.spec, self.ram_path, paths["console"], paths["control"],
                         paths["qmp"], binary, incoming=self.ram_source is not None)
        self.argv = argv
        with open(self.qemu_log, "wb") as log:
            # Its own process group: a Ctrl-C typed at the terminal is the lab's to handle
            # (`labctl console` ends a `verdict` wait with it); QEMU would quit on it.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                                         process_group=0)
        self.started = time.monotonic()
        try:
            self.console = self._accept(listeners["console"])
            if self.arch.blocking_uart:  # relay.py: never let QEMU wait on the lab
                self.console = relay(self.console)
            self.control = self._accept(listeners["control"])
            try:
                with stopping.foreign_loop():
                    self.qmp.accept(timeout=10)
                self.qmp.settimeout(self.qmp_seconds)
                stopping.check()
            except Interrupted:  # SIGTERM during the handshake: not a QEMU failure
                raise
            except Exception as exc:  # noqa: BLE001 - qemu.qmp raises several kinds
                stopping.check()  # a stop signal stopped qemu.qmp's event loop
                if self.exited_within(2.0):  # QEMU closes its sockets a moment before it exits
                    raise InfraError(self.death_reason()) from None
                raise InfraError(f"QMP handshake with QEMU failed: {exc}") from None
        finally:
            for sock in listeners.values():
                sock.close()

    def _accept(self, listener: socket.socket, timeout: float = 10.0) -> socket.socket:
        assert self.proc is not None, "QEMU was started"
        deadline = time.monotonic() + timeout
        listener.settimeout(0.1)
        while True:
            try:
                conn, _ = listener.accept()
                conn.setblocking(False)
                return conn
            except socket.timeout:
                if self.proc.poll() is not None:
                    raise InfraError(self.death_reason()) from None
                if time.monotonic() > deadline:
                    raise InfraError(f"QEMU did not connect its serial ports within {timeout:.0f} s") from None

    # -------------------------------------------------------------- state
    def exited_within(self, seconds: float) -> bool:
        """Whether QEMU exits within `seconds` (True at once if it already has)."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def qemu_output(self, limit: int = 2000) -> str:
        try:
            return self.qemu_log.read_bytes()[-limit:].decode(errors="replace").strip()
        except OSError:
            return ""

    def death_reason(self) -> str:
        code = self.proc.poll() if self.proc else None
        if code is None:
            how = "is still running"
        elif code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        elif code == 0:  # -no-reboot: a reset (a triple fault, say) ends QEMU cleanly
            how = "exited with status 0 (the guest reset or powered off)"
        else:
            how = f"exited with status {code}"
        tail = self.qemu_output(600)
        return f"QEMU {how}" + (f": {tail.splitlines()[-1]}" if tail else "")

    @property
    def qmp_seconds(self) -> float:
        """How long QEMU may take to answer QMP before it counts as stuck (stretched for an
        architecture TCG runs more slowly)."""
        return QMP_SECONDS * self.arch.tcg_slowdown

    def hmp(self, command: str) -> str:
        """A human monitor command through QMP (e.g. 'info registers -a')."""
        return self._qmp_cmd("human-monitor-command", **{"command-line": command})

    def command(self, name: str, **args):
        """A QMP command (device_add, migrate, query-hotpluggable-cpus, ...); InfraError if
        QEMU does not answer or refuses."""
        return self._qmp_cmd(name, **args)

    def status(self) -> str:
        return self._qmp_cmd("query-status")["status"]

    def _qmp_cmd(self, command: str, **args):
        """A QMP command; a QEMU that does not answer (frozen, stopped) is an InfraError.
        A stop signal during the command stops qemu.qmp's event loop (stopping.py): the
        command then fails, and that failure is the interruption, whatever qemu.qmp
        raised for it.  A stop that came while the command completed is acted on too."""
        assert self.qmp is not None, "QMP is used on a launched machine"
        try:
            with stopping.foreign_loop():
                answer = self.qmp.cmd(command, **args)
        except Exception as exc:  # noqa: BLE001 - sorted out below; the stop comes first
            stopping.check()
            raise self._qmp_failure(command, args, exc) from None
        stopping.check()
        return answer

    def _qmp_failure(self, command: str, args: dict, exc: Exception) -> Exception:
        if isinstance(exc, TimeoutError):
            return InfraError(f"QEMU did not answer QMP '{command}' within {self.qmp_seconds:g} s")
        if isinstance(exc, ExecuteError):  # QEMU answered, with an error
            return InfraError(f"QMP '{command}' {args} refused: {exc}")
        if isinstance(exc, QMPError):  # the monitor went away: QEMU is exiting or died
            return InfraError(f"QMP '{command}' failed ({type(exc).__name__}): {self.death_reason()}")
        return exc  # a bug, not QEMU's: the caller sees it as it was

    # -------------------------------------------------------------- shutdown
    def shutdown(self) -> None:
        """Stop QEMU (politely, then by force) and remove every socket and the RAM file,
        even if a second signal interrupts the stopping."""
        try:
            self._stop_qemu()
        finally:
            self._close()

    def _stop_qemu(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            assert self.qmp is not None  # created before QEMU starts
            self.qmp.settimeout(QUIT_SECONDS)
            with stopping.foreign_loop():
                self.qmp.cmd("quit")
        except Exception:  # noqa: BLE001 - any QMP failure (or a stuck QEMU) means: kill it
            pass
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _close(self) -> None:
        for closable in (self.qmp, self.console, self.control):
            if closable is not None:
                try:
                    closable.close()
                except Exception:  # noqa: BLE001
                    pass
        self.qmp = self.console = self.control = None
        if self.rundir is not None:
            self.rundir.close()
            self.rundir = None
