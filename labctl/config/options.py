"""Options every subcommand accepts (--lab, --accel, --artifacts), as kunit.py's
add_common_opts does, and the lab they select."""

from __future__ import annotations

import argparse
from pathlib import Path

from labctl.config.schema import ACCELERATORS, LabConfig, load_lab


def positive_int(text: str) -> int:
    """argparse type for counts (--jobs, --runs, --shards): 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def add_common_opts(parser: argparse.ArgumentParser) -> None:
    """--lab here defaults to SUPPRESS, so `labctl --lab X run` keeps working."""
    parser.add_argument("--lab", type=Path, default=argparse.SUPPRESS,
                        help="lab configuration (default: $KEXEC_LAB_CONFIG, ./lab.yaml, "
                             "or the repository's lab.yaml)")
    parser.add_argument("--accel", choices=ACCELERATORS, help="override lab.yaml's accelerator")
    parser.add_argument("--artifacts", help="override lab.yaml's artifacts directory")


def lab_from_args(args: argparse.Namespace) -> LabConfig:
    """lab.yaml with the command line's overrides."""
    return load_lab(args.lab, accel=args.accel, artifacts_dir=args.artifacts)
