"""`labctl kernel list`: what each catalogue kernel is, whether it is cached, and
which kexec-relevant options it was built with, without downloading or building."""

from __future__ import annotations

from dataclasses import dataclass

from labctl.config.arch import HOST
from labctl.config.schema import KernelEntry, LabConfig
from labctl.errors import LabError
from labctl.kernel.build import entry_recipe, plan_recipe
from labctl.kernel.providers import Kernel, cached_debian_kernel, path_kernel, resolve_package

KEXEC_SYMBOLS = ("KEXEC_FILE", "CRASH_DUMP", "PROC_VMCORE", "CRASH_HOTPLUG", "KEXEC_SIG")


@dataclass
class Row:
    name: str
    kind: str
    release: str = "?"
    cached: bool = False
    symbols: dict | None = None  # None: unknown until downloaded or built
    note: str = ""


def kind_of(entry: KernelEntry) -> str:
    return "debian" if entry.debian_package else "path" if entry.path else "recipe"


def entry_arch(lab: LabConfig, entry: KernelEntry) -> str:
    """The entry's guest architecture (a recipe's is in its file), known without a build."""
    return entry_recipe(lab, entry).arch if entry.recipe else entry.arch or HOST.name


def cached_kernel(lab: LabConfig, entry: KernelEntry, row: Row | None = None) -> Kernel | None:
    """The entry's kernel if it is downloaded or built already (nothing is fetched), else None;
    LabError when it cannot be looked up.  row, if given, gets the lookup's note."""
    row = row or Row(entry.name, kind_of(entry))
    return {"debian": _debian, "path": _path, "recipe": _recipe}[row.kind](lab, entry, row)


def describe_entry(lab: LabConfig, entry: KernelEntry) -> Row:
    """A row for one entry; a lookup that fails (no apt lists, bad recipe) becomes its note."""
    row = Row(entry.name, kind_of(entry))
    try:
        kernel = cached_kernel(lab, entry, row)
    except LabError as exc:
        row.note = f"({exc})"
        return row
    if kernel is not None:
        symbols = kernel.config_symbols()
        row.release, row.cached = kernel.release, True
        row.symbols = {s: symbols.get(f"CONFIG_{s}", "n") for s in KEXEC_SYMBOLS} if symbols else None
    return row


def _debian(lab: LabConfig, entry: KernelEntry, row: Row) -> Kernel | None:
    assert entry.debian_package, "a Debian entry"
    package, version = resolve_package(entry.debian_package)
    row.note = f"{package} {version}"
    return cached_debian_kernel(entry.name, lab.cache_dir, package, version, entry.arch)


def _path(lab: LabConfig, entry: KernelEntry, row: Row) -> Kernel | None:
    assert entry.path, "a path entry"
    path = (lab.path.parent / entry.path).resolve()
    row.note = str(path)
    return path_kernel(entry.name, path) if path.is_file() else None


def _recipe(lab: LabConfig, entry: KernelEntry, row: Row) -> Kernel | None:
    plan = plan_recipe(entry_recipe(lab, entry), lab.cache_dir)
    patches = ", ".join(p["name"][:4] for p in plan.inputs["patches"]) or "no patches"
    row.note = f"key {plan.key}, {plan.inputs['source']}, {patches}"
    if not plan.cached:
        return None
    build = plan.build(cache_hit=True)
    return Kernel(entry.name, build.bzimage, build.release, config=build.config, arch=build.arch)


def catalogue_table(lab: LabConfig) -> str:
    """The catalogue as a text table, default kernel marked, expected failures listed."""
    header = ["NAME", "KIND", "RELEASE", "CACHED", *KEXEC_SYMBOLS, "NOTES"]
    lines = [header]
    for name, entry in sorted(lab.kernels.items()):
        row = describe_entry(lab, entry)
        reasons = sorted(set(entry.expect_fail.values()))
        notes = [row.note] + ([f"expected to fail {len(entry.expect_fail)} scenario(s): "
                               + "; ".join(reasons)] if reasons else [])
        symbols = [(row.symbols or {}).get(s, "-") for s in KEXEC_SYMBOLS]
        lines.append([name + ("*" if name == lab.default_kernel else ""), row.kind, row.release,
                      "yes" if row.cached else "no", *symbols, "; ".join(filter(None, notes))])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)) + "  " + line[-1]
            for line in lines]
    return "\n".join(text + ["(* default kernel; '-' = not known until downloaded or built)"])
