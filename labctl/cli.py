"""labctl: the command line.  Parses arguments, resolves inputs, maps errors to exit codes.

Exit codes: 0 all passed, 1 an expectation failed, 2 usage or configuration
error, 3 infrastructure error, 130 interrupted.  When one invocation runs
several pairs, a failed expectation (a finding about the kernel) outranks an
infrastructure error.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import traceback
from pathlib import Path

from labctl import stopping
from labctl.artifacts import check_writable, new_run_id
from labctl.campaigns import bisect, ci_plan, coverage, fuzz, matrix
from labctl.config.options import add_common_opts, lab_from_args, positive_int
from labctl.config.schema import ARCH_NAMES, load_scenario
from labctl.console import session
from labctl.errors import EXIT_FAILED, EXIT_INFRA, EXIT_PASSED, EXIT_USAGE, ConfigError, Interrupted, LabError
from labctl.guest import rootfs
from labctl.guest.accel import AccelChooser
from labctl.kernel.build import build_entry
from labctl.kernel.catalogue import catalogue_table
from labctl.kernel.providers import resolve_kernel
from labctl.pair import dump_open
from labctl.pair.runner import run_pair
from labctl.progress import say
from labctl.report import cli as report_cli
from labctl.report import scenarios as scenarios_cli

REPO_ROOT = Path(__file__).resolve().parent.parent
# Subcommands that live with their own concern: each module's register(subparsers)
# adds its parser and sets func(args) -> exit code.  Add one entry per module.
COMMAND_MODULES: list = [matrix.register, report_cli.register, session.register, coverage.register,
                         fuzz.register, scenarios_cli.register, dump_open.register, bisect.register,
                         ci_plan.register, rootfs.register]
EXIT_PRIORITY = (EXIT_PASSED, EXIT_INFRA, EXIT_USAGE, EXIT_FAILED)
DESCRIPTION = """kexec-lab: prove on real QEMU guests whether kexec/kdump does what it promises.

labctl boots a kernel in a QEMU guest, loads a capture kernel with kexec_file_load, corrupts
what the scenario says, panics the guest and reports what happened (the capture kernel
booted, purgatory refused, the load was rejected...) against the scenario's expectation,
with the evidence in artifacts/.  Start with `labctl run crash-corrupt`."""
EPILOG = """exit codes: 0 all passed, 1 an expectation failed, 2 usage or configuration error,
3 infrastructure error (the lab or the host, not the kernel), 130 interrupted"""


def default_lab_path() -> Path:
    """$KEXEC_LAB_CONFIG, ./lab.yaml, or the lab.yaml that ships with the package."""
    if env := os.environ.get("KEXEC_LAB_CONFIG"):
        return Path(env)
    local = Path("lab.yaml")
    return local if local.is_file() else REPO_ROOT / "lab.yaml"


def cmd_run(args: argparse.Namespace) -> int:
    lab = lab_from_args(args)
    scenarios = [load_scenario(p) for p in matrix.scenario_paths(args.scenario, lab.scenarios_dir)]  # each once
    check_writable(lab.artifacts_dir)
    kernel = resolve_kernel(lab, args.kernel, progress=say, arch=args.arch)
    chooser = AccelChooser(lab.cache_dir)
    run_id = args.run_id or new_run_id()
    say(f"run {run_id}: kernel {kernel.name} ({kernel.release}"
         + (f", {kernel.package} {kernel.version}" if kernel.package else "") + ")")
    codes = []
    for scenario in scenarios:
        outcome = run_pair(lab, kernel, scenario, run_id, chooser, quiet=args.quiet,
                           save_vmcore=args.save_vmcore, fresh=args.fresh)
        print(outcome.summary)
        print(f"  artifacts: {outcome.directory}")
        codes.append(outcome.exit_code)
    return max(codes, key=EXIT_PRIORITY.index)


def cmd_kernel_fetch(args: argparse.Namespace) -> int:
    lab = lab_from_args(args)
    for name in args.names or [lab.default_kernel]:
        kernel = resolve_kernel(lab, name, progress=say)
        print(f"{kernel.name}: {kernel.release} {kernel.package or ''} {kernel.version or ''}".rstrip()
              + f" -> {kernel.bzimage}")
    return EXIT_PASSED


def cmd_kernel_list(args: argparse.Namespace) -> int:
    print(catalogue_table(lab_from_args(args)))
    return EXIT_PASSED


def cmd_kernel_build(args: argparse.Namespace) -> int:
    lab = lab_from_args(args)
    for name in args.names:
        build = build_entry(lab, name, args.jobs)
        print(f"{name}: {build.release} ({'cache hit' if build.cache_hit else 'built'}, "
              f"key {build.key}) -> {build.bzimage}")
    return EXIT_PASSED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labctl", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"labctl (kexec-lab) {importlib.metadata.version('labctl')}")
    parser.add_argument("--lab", type=Path, default=None,
                        help="lab configuration (default: $KEXEC_LAB_CONFIG, ./lab.yaml, "
                             "or the repository's lab.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run scenarios on one kernel")
    run.add_argument("scenario", nargs="+", help="scenario name (scenarios/NAME.yaml) or path")
    run.add_argument("--kernel", help="catalogue name or path to a bzImage (default: lab.yaml's)")
    add_common_opts(run)
    run.add_argument("--arch", choices=ARCH_NAMES,
                     help="the architecture of a --kernel PATH (default x86_64; arm64: an Image, "
                          "riscv64: an ELF vmlinux)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    run.add_argument("--save-vmcore", action="store_true",
                     help="keep a filtered, compressed dump (makedumpfile -c -d 23) of every capture "
                          "in the pair's artifacts as 'vmcore' (streamed through guest memory; over "
                          "the control port where the kernel gives no page frames: slow)")
    run.add_argument("--fresh", action="store_true", help="boot every pair cold instead of "
                     "forking it from a snapshot of the booted or loaded guest where it can be")
    run.add_argument("--run-id", type=matrix.run_id_arg,
                     help="run directory name (default: time + random); pairs must not exist yet")
    run.set_defaults(func=cmd_run)

    kernel = sub.add_parser("kernel", help="the kernel catalogue")
    ksub = kernel.add_subparsers(dest="kernel_command", required=True)
    fetch = ksub.add_parser("fetch", help="download and unpack catalogue kernels")
    fetch.add_argument("names", nargs="*", help="catalogue names (default: the default kernel)")
    add_common_opts(fetch)
    fetch.set_defaults(func=cmd_kernel_fetch)
    klist = ksub.add_parser("list", help="list the catalogue")
    add_common_opts(klist)
    klist.set_defaults(func=cmd_kernel_list)
    kbuild = ksub.add_parser("build", help="build recipe kernels (source + patches), cached")
    kbuild.add_argument("names", nargs="+", help="catalogue names of recipe kernels")
    kbuild.add_argument("-j", "--jobs", type=positive_int, help="parallel jobs (default: all cores)")
    add_common_opts(kbuild)  # --artifacts: where the build logs go
    kbuild.set_defaults(func=cmd_kernel_build)

    for register in COMMAND_MODULES:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.lab is None:
        args.lab = default_lab_path()
    stopping.install()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("labctl: interrupted", file=sys.stderr)
        return Interrupted.exit_code
    except LabError as exc:
        kind = "configuration error" if isinstance(exc, ConfigError) else \
            "interrupted" if isinstance(exc, Interrupted) else "infrastructure error"
        print(f"labctl: {kind}: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception:  # noqa: BLE001 - a bug in the lab must not read as a kernel failure (1)
        traceback.print_exc()
        print("labctl: internal error (a bug in kexec-lab, not a finding about the kernel); "
              "the traceback above says where", file=sys.stderr)
        return EXIT_INFRA
