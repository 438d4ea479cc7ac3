"""`labctl ci-plan`: the nightly's kernel x shard jobs for a CI engine, each job told what
its kernel needs, so a shard installs and caches only that.

The job list is `labctl matrix --emit`'s; each kernel's jobs also get its architecture
(a shard installs that arch's QEMU and, for a recipe, its compiler only), how it is
obtained (a recipe shard installs the kernel build tools, a Debian one does not) and a
cache key over what defines the kernel: its lab.yaml entry and, for a recipe, the
contents of the recipe file and every patch and config file it names.  A CI cache keyed
by it is restored unchanged on a night whose recipes did not change (labctl then finds
its build: nothing is compiled) and starts a new entry when they did.  The selection
(scenarios) is written into the jobs, so a shard runs what the plan counted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from labctl.campaigns.matrix import emit_github, emit_gitlab, select_pairs
from labctl.config.arch import HOST
from labctl.config.options import lab_from_args, positive_int
from labctl.config.schema import LabConfig
from labctl.kernel.build import entry_recipe

KEY_LENGTH = 16


def kernel_facts(lab: LabConfig, name: str) -> dict[str, str]:
    """arch, source (recipe, debian, path) and cache_key of a catalogue kernel."""
    entry = lab.kernels[name]
    defined: dict = {"debian_package": entry.debian_package, "path": entry.path,
                     "recipe": entry.recipe, "arch": entry.arch}
    arch = entry.arch or HOST.name
    if entry.recipe:
        recipe = entry_recipe(lab, entry)
        arch = recipe.arch
        files = [recipe.path, *recipe.patches, *recipe.fragments]
        files += [Path(recipe.base)] if Path(recipe.base).is_absolute() else []
        root = lab.path.parent
        defined["files"] = [[_relative(f, root), _sha256(f)] for f in files]
    source = "recipe" if entry.recipe else "debian" if entry.debian_package else "path"
    key = hashlib.sha256(json.dumps(defined, sort_keys=True).encode()).hexdigest()[:KEY_LENGTH]
    return {"arch": arch, "source": source, "cache_key": key}


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def plan(lab: LabConfig, engine: str, shards: int, kernels: list[str] | None,
         scenarios: list[str] | None) -> dict:
    """The engine's job document (GitHub: a strategy.matrix; GitLab: a child pipeline)."""
    pairs = select_pairs(lab, lab.scenarios_dir, kernels, scenarios)
    facts = {k: kernel_facts(lab, k) for k in sorted({p.kernel for p in pairs})}
    chosen = " ".join(dict.fromkeys(p.scenario for p in pairs)) if scenarios else ""
    if engine == "github":
        document = emit_github(pairs, shards)
        for job in document["include"]:
            job.update(facts[job["kernel"]], scenarios=chosen)
        return document
    document = emit_gitlab(pairs, shards)
    shard_job = document["lab-shard"]
    for entry in shard_job["parallel"]["matrix"]:
        kernel = facts[entry["KERNEL"]]
        entry.update(KERNEL_ARCH=kernel["arch"], KERNEL_SOURCE=kernel["source"],
                     KERNEL_CACHE_KEY=kernel["cache_key"])
    shard_job["variables"] = {"SCENARIOS": chosen}
    return document


def cmd_ci_plan(args) -> int:
    lab = lab_from_args(args)
    print(json.dumps(plan(lab, args.engine, args.shards, args.kernels, args.scenarios),
                     separators=(",", ":")))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("ci-plan", help="print the nightly's kernel x shard jobs for a CI "
                                   "engine, with each kernel's arch, source and cache key")
    parser.add_argument("--engine", choices=("github", "gitlab"), required=True)
    parser.add_argument("--shards", type=positive_int, default=2, help="shards per kernel")
    parser.add_argument("--kernels", nargs="+", help="catalogue names (default: all)")
    parser.add_argument("--scenarios", nargs="+", help="scenario names (default: all in scenarios/)")
    parser.add_argument("--lab", type=Path, default=argparse.SUPPRESS, help="lab configuration")
    parser.set_defaults(accel=None, artifacts=None)
    parser.set_defaults(func=cmd_ci_plan)
