"""`labctl coverage`: which bytes does purgatory actually guard on this kernel?

For each kernel and load method it corrupts every loaded segment role at
several placements (first byte, middle, last byte, the zero-filled tail, one
bit, a whole page), panics, and records whether purgatory refused.  The
answer is a table (Markdown and JSON) in the run's artifacts.  The scenarios
are generated here rather than kept as files: the table is the product.
Beside it, the load-time table (load_coverage.py): which images the kernel
accepts at all, as booted and locked down.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from labctl.artifacts import check_writable, new_run_id
from labctl.campaigns import load_coverage
from labctl.config.arch import ARCHES, HOST, get_arch
from labctl.config.options import add_common_opts, lab_from_args, positive_int
from labctl.config.schema import Corruption, Expectation, LabConfig, LoadStep, Scenario
from labctl.errors import EXIT_INFRA, EXIT_PASSED
from labctl.guest.accel import AccelChooser
from labctl.kernel.load_images import KERNEL_IMAGES
from labctl.kernel.providers import Kernel, resolve_kernel
from labctl.pair.runner import run_pair
from labctl.progress import say
from labctl.result import Outcome

PLACEMENTS = {  # name -> (offset, length, pattern)
    "first-byte": ("start", 1, "flip"),
    "middle": ("middle", 16, "flip"),
    "last-byte": ("end", 1, "flip"),
    "tail": ("tail", 1, "flip"),
    "bit": ("middle", 1, "bit"),
    "page-zero": ("page", 4096, "zero"),
}
METHODS = ("kexec_file_load", "kexec_load")
ALL_ROLES = tuple(dict.fromkeys(r for a in ARCHES.values() for m in a.methods for r in a.roles(m)))


def digest_model(kernel: Kernel, method: str) -> dict[str, tuple[bool | None, str]]:
    """role -> (does purgatory hash it?, why): what the sources say, before any run.

    kexec_file_load: kexec_calculate_store_digests() (kernel/kexec_file.c) hashes every
    segment's bufsz bytes plus memsz - bufsz zeros, skipping the purgatory segment (it is
    patched with the digest afterwards) and, under CONFIG_CRASH_HOTPLUG, the ELF core
    headers.  kexec_load: kexec-tools' purgatory checks every segment but its own.
    None: not known for this kernel (no config file to read CRASH_HOTPLUG from)."""
    model: dict[str, tuple[bool | None, str]] = {
        role: (True, f"{method} hashes the {role} segment (bufsz bytes + zeros to memsz)")
        for role in get_arch(kernel.arch).roles(method)}
    model["purgatory"] = (False, "purgatory is never hashed: it holds the digest it checks")
    if method == "kexec_file_load":
        if not kernel.config:
            model["elfcorehdr"] = (None, "unknown: no kernel config to read CONFIG_CRASH_HOTPLUG from")
        elif kernel.config_symbols().get("CONFIG_CRASH_HOTPLUG") == "y":
            model["elfcorehdr"] = (False, "CONFIG_CRASH_HOTPLUG=y: kexec_calculate_store_digests() "
                                          "skips the ELF core headers so hotplug can rewrite them")
    return model


@dataclass(frozen=True)
class Cell:
    kernel: str
    method: str
    role: str
    placement: str
    outcome: str | None
    reason: str
    directory: str
    vmcore_ok: bool | None = None  # when the capture kernel booted: was its dump sane?
    arch: str = "x86_64"

    @property
    def protected(self) -> bool | None:
        if self.outcome == Outcome.CONFIG_ERROR:
            return None  # the placement does not exist on this segment (e.g. no tail)
        return self.outcome == Outcome.PURGATORY_REFUSED

    def to_json(self) -> dict:
        return {**self.__dict__, "protected": self.protected}


def coverage_scenario(method: str, role: str, placement: str) -> Scenario:
    offset, length, pattern = PLACEMENTS[placement]
    name = f"cov-{method.replace('_', '-')}-{role}-{placement}"
    return Scenario(name=name, path=Path(f"<coverage:{name}>"),
                    description=f"{method}: corrupt {role} at {placement} ({length} B {pattern})",
                    load=LoadStep(method=method),
                    corrupt=Corruption(role, offset, length, pattern),
                    trigger="sysrq", expect=Expectation(Outcome.PURGATORY_REFUSED))


def _run_cell(lab: LabConfig, kernel: Kernel, method: str, role: str, placement: str,
              run_id: str, fresh: bool = False) -> Cell:
    """One corruption, forked from the snapshot of the loaded guest unless fresh
    (runs in a worker process)."""
    chooser = AccelChooser(lab.cache_dir)
    result = run_pair(lab, kernel, coverage_scenario(method, role, placement), run_id,
                      chooser, quiet=True, fresh=fresh)
    vmcore = ((result.evidence.get("verdict") or {}).get("vmcore") or {})
    return Cell(kernel.name, method, role, placement, result.outcome, result.reason or "",
                str(result.directory), vmcore.get("ok"), kernel.arch)


def cell_text(cell: Cell | None) -> str:
    if cell is None:
        return ""
    if cell.protected is None:
        return "n/a"
    if cell.protected:
        return "refused"
    broken = cell.outcome == Outcome.CAPTURE_BOOTED and cell.vmcore_ok is False
    return f"**NOT** ({cell.outcome}{', vmcore broken' if broken else ''})"


def markdown(cells: list[Cell]) -> str:
    """One table per kernel (and its architecture) and method: roles as rows, placements
    as columns; the roles are those the architecture's loader makes."""
    lines = ["# Digest coverage: does purgatory refuse a corrupted segment?", "",
             "`refused` = purgatory parked the CPU (protected); `NOT (outcome)` = the "
             "corruption was not caught; `n/a` = that placement does not exist on the segment.", ""]
    index = {(c.kernel, c.method, c.role, c.placement): c for c in cells}
    for kernel, arch, method in dict.fromkeys((c.kernel, c.arch, c.method) for c in cells):
        lines += [f"## {kernel} ({arch}), {method}", "",
                  "| segment | " + " | ".join(PLACEMENTS) + " |",
                  "|---|" + "---|" * len(PLACEMENTS)]
        for role in get_arch(arch).roles(method):
            row = [cell_text(index.get((kernel, method, role, p))) for p in PLACEMENTS]
            lines.append(f"| {role} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def _kernels(args: argparse.Namespace, lab: LabConfig) -> list[Kernel]:
    return [resolve_kernel(lab, name, progress=say)
            for name in args.kernel or [lab.default_kernel]]


def _load_jobs(args: argparse.Namespace, kernels: list[Kernel]) -> list[tuple[Kernel, str, str, str]]:
    """(kernel, method, image, mode) for the load-time table (its images are x86_64
    bzImage kinds: the host architecture's kernels only)."""
    if "loads" not in args.table:
        return []
    return [(kernel, method, image, mode) for kernel in kernels if get_arch(kernel.arch) is HOST
            for method, image in load_coverage.ROWS
            if (not args.image or image in args.image) and method in (args.method or METHODS)
            for mode in args.mode or load_coverage.MODES]


def _jobs(args: argparse.Namespace, kernels: list[Kernel]) -> list[tuple[Kernel, str, str, str]]:
    work: list[tuple[Kernel, str, str, str]] = []
    if "digest" not in args.table:
        return work
    for kernel in kernels:
        arch = get_arch(kernel.arch)
        for method in args.method or arch.methods:
            roles = arch.roles(method)  # none: the lab cannot drive this method there
            for role in args.role or roles:
                if role in roles:
                    work += [(kernel, method, role, p) for p in args.placement or PLACEMENTS]
    return work


def _completed(futures: list, work: list):
    """(future, work item) pairs in the order they finish."""
    index = {future: item for future, item in zip(futures, work, strict=True)}
    for future in as_completed(futures):
        yield future, index[future]


def _cell_of(future, item: tuple, lab: LabConfig, run_id: str) -> Cell:
    """The cell a worker produced; a worker that crashed is an infrastructure error
    in its cell, never the end of the whole table."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - the table must survive one broken worker
        kernel, method, role, placement = item
        return Cell(kernel.name, method, role, placement, Outcome.INFRA_ERROR,
                    f"worker failed: {type(exc).__name__}: {exc}",
                    str(lab.artifacts_dir / run_id / kernel.name), arch=kernel.arch)


def _load_cell_of(future, item: tuple, lab: LabConfig, run_id: str) -> load_coverage.LoadCell:
    """As _cell_of, for the load-time table."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - the table must survive one broken worker
        return load_coverage.failed_cell(item, f"worker failed: {type(exc).__name__}: {exc}",
                                         str(lab.artifacts_dir / run_id / item[0].name))


REPEATABLE = ("kernel", "method", "role", "placement", "table", "image", "mode")


def cmd_coverage(args: argparse.Namespace) -> int:
    for name in REPEATABLE:  # a selection is a set: `--kernel k --kernel k` runs k once
        if values := getattr(args, name):
            setattr(args, name, list(dict.fromkeys(values)))
    lab = lab_from_args(args)
    check_writable(lab.artifacts_dir)
    kernels = _kernels(args, lab)
    work, load_work = _jobs(args, kernels), _load_jobs(args, kernels)
    run_id = new_run_id()
    total = len(work) + len(load_work)
    print(f"coverage run {run_id}: {len(work)} corruptions and {len(load_work)} loads, "
          f"{args.jobs} at a time", file=sys.stderr)
    cells, loads = [], []
    context = multiprocessing.get_context("spawn")  # no fork of a process holding sockets
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        futures: list[Future] = [pool.submit(_run_cell, lab, *item, run_id, args.fresh) for item in work]
        futures += [pool.submit(load_coverage.run_load_cell, lab, *item, run_id) for item in load_work]
        for done, (future, item) in enumerate(_completed(futures, work + load_work), 1):
            if len(item) == 4 and item[2] in KERNEL_IMAGES:  # (kernel, method, image, mode)
                load = _load_cell_of(future, item, lab, run_id)
                loads.append(load)
                line = f"{load.kernel} {load.method} {load.image} {load.mode}: {load.text()}"
            else:
                cell = _cell_of(future, item, lab, run_id)
                cells.append(cell)
                line = f"{cell.kernel} {cell.method} {cell.role} {cell.placement}: {cell_text(cell)}"
            print(f"[{done}/{total}] {line}", file=sys.stderr, flush=True)
    out = lab.artifacts_dir / run_id / "coverage"
    out.mkdir(parents=True, exist_ok=True)
    order = {item[1:]: i for i, item in enumerate(work)}
    cells.sort(key=lambda c: (c.kernel, order[(c.method, c.role, c.placement)]))
    load_order = {item[1:]: i for i, item in enumerate(load_work)}
    loads.sort(key=lambda c: (c.kernel, load_order[(c.method, c.image, c.mode)]))
    force = {k.name: k.config_symbols().get("CONFIG_KEXEC_SIG_FORCE") == "y" for k in kernels}
    text = "\n".join(filter(None, [markdown(cells) if work else "",
                                   load_coverage.markdown(loads, force) if load_work else ""]))
    (out / "coverage.md").write_text(text + "\n")
    written = []
    if work:
        (out / "coverage.json").write_text(json.dumps([c.to_json() for c in cells], indent=2) + "\n")
        written.append("coverage.json")
    if load_work:
        (out / "loads.json").write_text(json.dumps([c.to_json() for c in loads], indent=2) + "\n")
        written.append("loads.json")
    print(text)
    print(f"written: {out / 'coverage.md'} and {' and '.join(written)}")
    infra = [c for c in cells + loads if c.outcome == Outcome.INFRA_ERROR]
    if infra:
        print(f"{len(infra)} corruption(s) ended in an infrastructure error; see their result.json",
              file=sys.stderr)
    return EXIT_INFRA if infra else EXIT_PASSED


def register(sub) -> None:
    parser = sub.add_parser("coverage", help="which segment bytes the digest protects, as a table")
    parser.add_argument("--kernel", "--kernels", dest="kernel", nargs="+", action="extend",
                        help="catalogue names or bzImages (repeatable; default: the default kernel)")
    parser.add_argument("--method", action="append", choices=METHODS,
                        help="load method (repeatable; default: every method the kernel's "
                             "architecture has)")
    parser.add_argument("--role", action="append", choices=ALL_ROLES,
                        help="only these segment roles (repeatable)")
    parser.add_argument("--placement", action="append", choices=tuple(PLACEMENTS),
                        help="only these placements (repeatable)")
    parser.add_argument("--table", action="append", choices=("digest", "loads"),
                        help="digest: corruptions vs purgatory; loads: which images load, as "
                        "booted and locked down (repeatable; default: both)")
    parser.add_argument("--image", action="append", choices=KERNEL_IMAGES,
                        help="load table: only these image kinds (repeatable)")
    parser.add_argument("--mode", action="append", choices=tuple(load_coverage.MODES),
                        help="load table: only these modes (repeatable)")
    parser.add_argument("-j", "--jobs", type=positive_int, default=1, help="guests at a time (default 1)")
    add_common_opts(parser)
    parser.add_argument("--fresh", action="store_true", help="boot every corruption cold instead "
                        "of forking it from a snapshot of the loaded guest")
    parser.set_defaults(func=_with_defaults)


def _with_defaults(args: argparse.Namespace) -> int:
    args.table = args.table or ["digest", "loads"]
    return cmd_coverage(args)
