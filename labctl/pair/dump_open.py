"""`labctl dump DIR`: open a saved dump the way users do, with drgn.

DIR is a pair's artifacts directory written with --save-vmcore (vmcore, result.json,
control.log).  drgn opens the kdump-compressed file (its wheels bundle libkdumpfile)
and prints the panic message, the crashed task and its backtrace.

What drgn can do depends on the debug info at hand (docs/findings-dumps.md):
- with a vmlinux carrying DWARF (a recipe kernel's build output, or Debian's
  -dbg package, about 300 MB, fetched only on --fetch-debug-info and cached):
  everything: the printk buffer, the crashed thread, an ORC/DWARF unwind;
- without: kallsyms from VMCOREINFO (kernels >= 6.0) names addresses, but there
  are no types, so no task list and no printk buffer.  The crashed task is then
  the PRSTATUS note saved in the crash path (its registers unwound by drgn
  without CFI), and the panic message comes from the log read out of the dump
  with the host's makedumpfile --dump-dmesg (VMCOREINFO only).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from elftools.elf.elffile import ELFFile

from labctl.errors import ConfigError, InfraError
from labctl.evidence import dump_cpus
from labctl.evidence.kdump_file import KdumpFormatError, notes_as_elf_head, open_kdump
from labctl.kernel.debian import DOWNLOAD_SECONDS
from labctl.tools import run_tool

PANIC = re.compile(r"Kernel panic - not syncing[^\n]*")
CONTROL_LINE = re.compile(r"^\[\s*[\d.]+\] < (.*)$")
# x86_64 struct pt_regs (arch/x86/include/asm/ptrace.h): the first 21 words of the
# PRSTATUS note's pr_reg (struct user_regs_struct) in the same order.
PT_REGS = "r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di orig_ax ip cs flags sp ss".split()
DMESG_SECONDS = 60.0
MIN_WALKED_FRAMES = 3  # fewer named frames from drgn's walk: scan the stack as UNWINDER_GUESS does
THREAD_SIZE = 16 << 10  # x86_64 without KASAN (arch/x86/include/asm/page_64_types.h)


@dataclass
class Opened:
    """What `labctl dump` prints, and how long each part took."""

    vmcore: Path
    release: str | None = None
    debug_info: str = "none"
    panic: str | None = None
    panic_from: str = ""
    task: str | None = None
    frames: list[str] = field(default_factory=list)
    unwound_by: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    def text(self) -> str:
        lines = [f"dump: {self.vmcore} (kernel {self.release or 'unknown'})",
                 f"debug info: {self.debug_info}",
                 f"panic: {self.panic or 'not found'} ({self.panic_from})",
                 f"crashed task: {self.task or 'unknown'}",
                 f"backtrace ({self.unwound_by}):"]
        lines += [f"  {frame}" for frame in self.frames] or ["  (none)"]
        lines.append("drgn: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items()))
        return "\n".join(lines)


def capture_head(directory: Path) -> bytes | None:
    """The dump's ELF notes, as an ELF head: /proc/vmcore's head as the lab's capture helper
    sent it (control.log's capture hello), or the notes makedumpfile saved in a
    kdump-compressed vmcore (kdump-tools' dumps: userland debian)."""
    log = directory / "control.log"
    for line in log.read_text(errors="replace").splitlines() if log.is_file() else []:
        if (m := CONTROL_LINE.match(line)) and '"role":"capture"' in m[1]:
            hello = json.loads(m[1])
            if hello.get("vmcore_head"):
                return bytes.fromhex(hello["vmcore_head"])
    try:
        return notes_as_elf_head(open_kdump(directory / "vmcore")) or None
    except (KdumpFormatError, OSError):  # an ELF vmcore, or none
        return None


def open_dump(directory: Path, vmlinux: Path | None) -> Opened:
    """Open DIR/vmcore with drgn; with `vmlinux` (DWARF) or from kallsyms alone."""
    try:
        import drgn
    except ImportError:
        raise ConfigError("labctl dump needs drgn: pip install 'kexec-lab[dump]' (make setup "
                          "installs it)") from None
    vmcore = directory / "vmcore"
    if not vmcore.is_file():
        raise ConfigError(f"{vmcore} does not exist: run the scenario with --save-vmcore first")
    opened = Opened(vmcore)
    start = time.monotonic()
    prog = drgn.Program()
    prog.set_core_dump(str(vmcore))
    opened.release = prog["UTS_RELEASE"].string_().decode()  # from VMCOREINFO
    if vmlinux is not None:
        prog.load_debug_info([str(vmlinux)])
        opened.debug_info = f"vmlinux {vmlinux}"
    opened.seconds["open"] = round(time.monotonic() - start, 3)
    if vmlinux is not None and _took_debug_file(prog):
        _with_debug_info(prog, directory, opened)
    else:
        if vmlinux is not None:  # a recipe kernel's vmlinux without DWARF, or another build's
            opened.debug_info += " not taken by drgn (no DWARF, or another build)"
        _without_types(prog, directory, opened)
    return opened


def _took_debug_file(prog) -> bool:
    try:
        return prog.main_module().debug_file_path is not None
    except LookupError:
        return False


def _with_debug_info(prog, directory: Path, opened: Opened) -> None:
    """The printk buffer and the crashed thread through the kernel's types.  A page the dump
    left out (makedumpfile's filtering) is said, and the crash-path registers still unwind."""
    import drgn
    from drgn.helpers.linux.printk import get_printk_records
    start = time.monotonic()
    texts = [record.text.decode(errors="replace") for record in get_printk_records(prog)]
    panics = [text for text in texts if PANIC.search(text)]
    opened.panic, opened.panic_from = (panics[-1].strip() if panics else None), "the dump's printk buffer"
    try:
        thread = prog.crashed_thread()
        task = thread.object
        opened.task = f"pid {thread.tid} ({task.comm.string_().decode()}) on CPU {int(task.thread_info.cpu)}"
        opened.frames = [str(frame) for frame in thread.stack_trace()]
        opened.unwound_by = "drgn with DWARF/ORC from the vmlinux"
    except drgn.FaultError as exc:
        opened.task = f"not readable: {exc} (the dump's filtering left the page out)"
        _unwind_crash_note(prog, directory, opened, "drgn with DWARF/ORC")
    opened.seconds["unwind"] = round(time.monotonic() - start, 3)


def _without_types(prog, directory: Path, opened: Opened) -> None:
    """No types: kallsyms from VMCOREINFO names addresses."""
    from drgn.helpers.linux.kallsyms import load_vmlinux_kallsyms
    start = time.monotonic()
    prog.register_symbol_finder("kallsyms", load_vmlinux_kallsyms(prog), enable_index=0)
    opened.debug_info = ("none" if opened.debug_info == "none" else opened.debug_info) + \
        ": kallsyms from VMCOREINFO (no types, no CFI)"
    opened.seconds["kallsyms"] = round(time.monotonic() - start, 3)
    log = host_dmesg(opened.vmcore)
    panics = [m[0] for line in log for m in [PANIC.search(line)] if m]
    opened.panic, opened.panic_from = (panics[-1] if panics else None), "the dump's log, makedumpfile --dump-dmesg"
    _unwind_crash_note(prog, directory, opened, "drgn without CFI")


def _unwind_crash_note(prog, directory: Path, opened: Opened, how: str) -> None:
    """Unwind from the registers of the PRSTATUS note saved in the crash path."""
    import drgn
    head = capture_head(directory)
    if head is None:
        opened.unwound_by = "no PRSTATUS notes at hand (no capture hello in control.log, no notes in the vmcore)"
        return
    start = time.monotonic()
    crashed = _crashed_note(head, host_dmesg(opened.vmcore), prog)
    if crashed is None:
        opened.unwound_by = "no PRSTATUS note in the crash path"
        return
    cpu, note_regs, logged, pid = crashed
    if opened.task is None or opened.task.startswith("not readable"):
        comm = f" ({logged['line'].split('Comm: ')[-1].split(' ')[0]})" if logged else ""
        opened.task = f"pid {pid}{comm} on CPU {cpu}"
    u64 = prog.int_type("unsigned long", 8, False)
    pt_regs = prog.struct_type("pt_regs", 8 * len(PT_REGS),
                               [drgn.TypeMember(u64, name, 64 * i) for i, name in enumerate(PT_REGS)])
    trace = prog.stack_trace(drgn.Object.from_bytes_(prog, pt_regs, note_regs))
    opened.frames = [str(frame) for frame in trace]
    opened.unwound_by = f"{how} from the crash-path PRSTATUS registers"
    if sum(_named(prog, frame.pc) for frame in trace) < MIN_WALKED_FRAMES:
        # no frame pointers and no ORC to walk (a kernel built with UNWINDER_GUESS): do what
        # its own dump_stack() does, every kernel-text address on the stack, marked "?"
        sp = int.from_bytes(note_regs[8 * PT_REGS.index("sp"):8 * PT_REGS.index("sp") + 8], "little")
        opened.frames += guess_frames(prog, sp)
        opened.unwound_by += ("; then the words on the stack that point into kernel text, as the "
                              "kernel's UNWINDER_GUESS prints them (the walk stopped: no frame pointers)")
    opened.seconds["unwind"] = round(time.monotonic() - start, 3)


def _named(prog, address: int) -> bool:
    import drgn
    try:
        return prog.symbol(address).kind == drgn.SymbolKind.FUNC
    except LookupError:
        return False


def guess_frames(prog, sp: int) -> list[str]:
    """`? function+0xoff` for each word from sp to the top of its THREAD_SIZE stack that is
    an address inside a kernel function (arch/x86/kernel/unwind_guess.c reads the stack
    the same way); what the dump left out ends the scan."""
    import drgn
    frames = []
    for address in range(sp & ~7, (sp | (THREAD_SIZE - 1)) + 1, 8):
        try:
            word = prog.read_u64(address)
            symbol = prog.symbol(word)
        except (drgn.FaultError, LookupError):
            continue
        if symbol.kind == drgn.SymbolKind.FUNC and word != symbol.address:
            frames.append(f"? {symbol.name}+{word - symbol.address:#x}/{symbol.size:#x} (at {address:#x})")
    return frames


def _crashed_note(head: bytes, log: list[str], prog) -> tuple[int, bytes, dict | None, int] | None:
    """(CPU, its pt_regs bytes, the log's CPU line, its pid) of the note saved in the crash path
    (the note's index is the CPU's when the log does not say: one note per online CPU)."""
    logged = dump_cpus.panic_cpu_in_log(log)
    descs = [note["n_desc"] for seg in ELFFile(io.BytesIO(head)).iter_segments() if seg["p_type"] == "PT_NOTE"
             for note in seg.iter_notes() if note["n_type"] == "NT_PRSTATUS"]
    for index, note in enumerate(dump_cpus.prstatus_notes(head)):
        try:
            name = prog.symbol(note.pc).name
        except LookupError:
            continue
        if name in dump_cpus.CRASH_PATH:
            regs = descs[index][dump_cpus.PR_REG:dump_cpus.PR_REG + 8 * len(PT_REGS)]
            return (logged["cpu"] if logged else index), regs, logged, note.pid
    return None


def host_dmesg(vmcore: Path) -> list[str]:
    """The crashed kernel's log read out of the dump on the host (makedumpfile, VMCOREINFO only)."""
    tool = shutil.which("makedumpfile")
    if tool is None:
        raise InfraError("makedumpfile is not installed on the host (apt-get install makedumpfile)")
    with tempfile.TemporaryDirectory(prefix="labctl-dump-") as tmp:
        out = Path(tmp) / "dmesg"
        run_tool([tool, "--dump-dmesg", str(vmcore), str(out)], "reading the log out of the dump",
                 DMESG_SECONDS, check=False)
        return out.read_text(errors="replace").splitlines() if out.exists() else []


# ------------------------------------------------------------------ debug info
def debug_vmlinux(kernel: dict, cache_dir: Path, fetch: bool) -> tuple[Path | None, str]:
    """The vmlinux with DWARF for the kernel result.json names: a recipe kernel's build
    output, or Debian's -dbg package (cached; downloaded only when `fetch`)."""
    recipe = kernel.get("recipe") or {}
    if recipe.get("directory") and (Path(recipe["directory"]) / "vmlinux").is_file():
        return Path(recipe["directory"]) / "vmlinux", "the recipe build's vmlinux"
    package, version, release = kernel.get("package"), kernel.get("version"), kernel.get("release")
    if not (package and version and release):
        return None, "no debug info known for this kernel"
    target = cache_dir / "debug" / f"{package}-dbg_{version}" / f"vmlinux-{release}"
    if target.is_file():
        return target, f"Debian's {package}-dbg (cached)"
    if not fetch:
        return None, f"Debian's {package}-dbg is not cached (--fetch-debug-info downloads it, ~300 MB)"
    fetch_dbg_vmlinux(f"{package}-dbg", version, release, target)
    return target, f"Debian's {package}-dbg (downloaded)"


def fetch_dbg_vmlinux(package: str, version: str, release: str, target: Path) -> None:
    """apt-get download the -dbg package and keep only its vmlinux (1.8 GB unpacked whole)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        run_tool(["apt-get", "-o", "APT::Sandbox::User=root", "download", f"{package}={version}"],
                 f"downloading {package} {version}", DOWNLOAD_SECONDS, cwd=Path(tmp))
        debs = list(Path(tmp).glob("*.deb"))
        if not debs:
            raise InfraError(f"apt-get download {package}={version} left no .deb file")
        member = f"./usr/lib/debug/boot/vmlinux-{release}"
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[0])],
                              stdout=subprocess.PIPE) as archive:
            untar = subprocess.run(["tar", "-x", "-C", tmp, member], stdin=archive.stdout,
                                   capture_output=True, text=True, timeout=DOWNLOAD_SECONDS)
        if untar.returncode != 0 or not (Path(tmp) / member).is_file():
            raise InfraError(f"no {member} in {debs[0].name}: {untar.stderr.strip()[-300:]}")
        (Path(tmp) / member).replace(target)


def register(sub) -> None:
    parser = sub.add_parser("dump", help="open a saved dump (--save-vmcore) with drgn: the panic, "
                                         "the crashed task and its backtrace")
    parser.add_argument("directory", type=Path, help="a pair's artifacts directory holding vmcore")
    parser.add_argument("--vmlinux", type=Path, help="a vmlinux with DWARF for the crashed kernel")
    parser.add_argument("--fetch-debug-info", action="store_true",
                        help="download Debian's -dbg package for the kernel (~300 MB, cached)")
    parser.add_argument("--no-debug-info", action="store_true",
                        help="kallsyms only, even when a vmlinux is at hand")
    parser.add_argument("--lab", type=Path, default=argparse.SUPPRESS,
                        help="lab configuration (for its cache directory)")
    parser.set_defaults(func=cmd_dump)


def cmd_dump(args) -> int:
    from labctl.config.schema import load_lab
    vmlinux: Path | None = args.vmlinux
    if vmlinux is None and not args.no_debug_info:
        result = args.directory / "result.json"
        kernel = json.loads(result.read_text()).get("kernel", {}) if result.is_file() else {}
        cache_dir = load_lab(args.lab).cache_dir
        vmlinux, why = debug_vmlinux(kernel, cache_dir, args.fetch_debug_info)
        print(f"debug info: {why}")
    print(open_dump(args.directory, vmlinux).text())
    return 0


def check_saved(directory: Path, console_lines: list[str], dump_cpus_evidence: dict) -> dict:
    """--save-vmcore: the saved dump opened with drgn right away, as a user would (kallsyms
    only: no download during a run), and compared with what the run saw: the panic message
    read out of the dump is the console's, the crashed task is the one the dump's log and
    notes name, and there is a backtrace."""
    try:
        opened = open_dump(directory, None)
    except ConfigError as exc:  # drgn not installed
        return {"opened": False, "why": str(exc), "problems": []}
    evidence: dict = {"opened": True, "panic": opened.panic, "task": opened.task,
                      "frames": opened.frames, "unwound_by": opened.unwound_by,
                      "seconds": opened.seconds, "problems": []}
    console = next((line for line in console_lines if PANIC.search(line)), None)
    if console is not None and opened.panic != console:
        evidence["problems"].append(f"drgn: the panic in the saved dump is {opened.panic!r}, the "
                                    f"console's {console!r}")
    logged = dump_cpus_evidence.get("log") or {}
    if logged.get("pid") is not None and not (opened.task or "").startswith(f"pid {logged['pid']} "):
        evidence["problems"].append(f"drgn: the crashed task in the saved dump is {opened.task}, the "
                                    f"dump's log says PID {logged['pid']}")
    if not opened.frames:
        evidence["problems"].append(f"drgn: no backtrace of the crashed task ({opened.unwound_by})")
    return evidence
