"""Kernel recipes: a source tree, a patch series and a config, built once and cached.

A recipe (guests/kernels/NAME.yaml) names its source (Debian's packaged
linux-source-X.Y, unpacked into the cache, or a local tree the lab never
writes to), an ordered list of patches, a base config (tinyconfig, defconfig
or a config file) and config fragments.  Its cache key hashes all of these
plus the compiler, so the same inputs are a cache hit and any change is a new
build.  Patches go to a private hard-linked copy of the tree (`patch` replaces
files by rename, so the shared tree keeps its bytes); objects go to `make O=`,
compiled through ccache (ccache.py) when it is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import unidiff

from labctl.cache_lock import locked
from labctl.config.arch import ARCHES, HOST, get_arch
from labctl.config.schema import Field, KernelEntry, LabConfig, Validator, read_yaml
from labctl.errors import ConfigError, InfraError
from labctl.kernel import ccache
from labctl.kernel.debian import apt_show, download_and_unpack, installed_version, package_dir
from labctl.kernel.image import CONFIG_LINE, Kernel, config_values
from labctl.kernel.signing import key_pair
from labctl.progress import Progress
from labctl.tools import run_tool

BUILD_FORMAT = 1  # bump when the build procedure changes what it produces
BASE_TARGETS = ("tinyconfig", "defconfig", "allnoconfig")
OUTPUTS = {  # cached name -> path inside the object directory (plus the arch's images)
    "config": ".config",
    "System.map": "System.map",
    "vmlinux": "vmlinux",
}
PROGRESS_SECONDS = 5.0
TOOL_SECONDS = 120.0  # gcc --version, one patch
UNPACK_SECONDS = 900.0  # the kernel source tarball
HUNK_FAILED = re.compile(r"^Hunk #(\d+) FAILED at (\d+)")
PATCHING_FILE = re.compile(r"^(?:patching|checking) file '?([^']+?)'?$")
KBUILD_STEP = re.compile(r"^\s+([A-Z][A-Z0-9_]*)\s+(\S+)")

RECIPE_SCHEMA = {
    "description": Field(str, default=""),
    "arch": Field(str, default=HOST.name, choices=tuple(ARCHES)),  # cross-built unless the host's
    "source": Field(dict, schema={
        "debian_package": Field(str, default=None),
        "path": Field(str, default=None),
    }),
    "patches": Field(list, default=[], items=Field(str)),
    "config": Field(dict, schema={
        "base": Field(str, default="tinyconfig"),
        "fragments": Field(list, default=[], items=Field(str)),
    }, default={}),
    # lab keys built into the kernel's keyring (CONFIG_SYSTEM_TRUSTED_KEYS); signing.py
    "trusted_keys": Field(list, default=[], items=Field(str, choices=("lab",))),
}


class BuildError(InfraError):
    """The kernel did not build; names the step and the log."""


class PatchError(ConfigError):
    """A patch of the series does not apply: the recipe needs fixing (exit 2, not 3)."""


@dataclass(frozen=True)
class Recipe:
    """A validated recipe; every path is absolute."""

    name: str
    path: Path
    description: str
    source_package: str | None
    source_path: Path | None
    patches: tuple[Path, ...]
    base: str  # a make target from BASE_TARGETS, or a config file path
    fragments: tuple[Path, ...]
    trusted_keys: tuple[str, ...] = ()
    arch: str = HOST.name


@dataclass(frozen=True)
class Build:
    """A cached build: where its outputs are and what went into it."""

    key: str
    directory: Path
    release: str
    inputs: dict
    cache_hit: bool

    @property
    def arch(self) -> str:
        return self.inputs.get("arch", HOST.name)

    @property
    def bzimage(self) -> Path:
        """The image QEMU boots (bzImage on x86_64, Image on arm64 and riscv64)."""
        return self.directory / get_arch(self.arch).boot_image

    @property
    def kexec_image(self) -> Path:
        """The image the capture kernel is loaded from (riscv64: the ELF vmlinux)."""
        return self.directory / get_arch(self.arch).kexec_image

    @property
    def config(self) -> Path:
        return self.directory / "config"

    def describe(self) -> dict:
        """What result.json records about a recipe kernel."""
        return {"key": self.key, "directory": str(self.directory), "cache_hit": self.cache_hit,
                "source": self.inputs["source"], "base": self.inputs["base"],
                "patches": self.inputs["patches"], "fragments": self.inputs["fragments"],
                **({"trusted_keys": self.inputs["trusted_keys"]}
                   if "trusted_keys" in self.inputs else {})}


# ------------------------------------------------------------------ recipes

def load_recipe(path: Path, name: str | None = None) -> Recipe:
    """Read and check a recipe; files it names must exist (errors name file:line:key)."""
    path = Path(path).resolve()
    data, located = read_yaml(path)
    check = Validator(path, located)
    raw = check.mapping(data, RECIPE_SCHEMA)
    source = raw["source"]
    if bool(source["debian_package"]) == bool(source["path"]):
        check.fail(("source",), "needs exactly one of 'debian_package' or 'path'")
    base = raw["config"]["base"]
    if base not in BASE_TARGETS:
        base = str(_existing_file(check, path, ("config", "base"), base,
                                  f"is neither one of {', '.join(BASE_TARGETS)} nor a file"))
    source_path = None
    if source["path"]:
        source_path = path.parent / os.path.expanduser(source["path"])
        if not (source_path / "Makefile").is_file() or not (source_path / "Kconfig").is_file():
            check.fail(("source", "path"), f"{source_path} is not a kernel source tree "
                       "(no Makefile and Kconfig)")
    return Recipe(
        name=name or path.stem, path=path, description=raw["description"],
        source_package=source["debian_package"], source_path=source_path,
        patches=_file_list(check, path, ("patches",), raw["patches"]),
        base=base, fragments=_file_list(check, path, ("config", "fragments"),
                                        raw["config"]["fragments"]),
        trusted_keys=tuple(raw["trusted_keys"]), arch=raw["arch"])


def _file_list(check: Validator, recipe: Path, keypath: tuple, items: list) -> tuple[Path, ...]:
    return tuple(_existing_file(check, recipe, keypath + (i,), item, "file not found")
                 for i, item in enumerate(items))


def _existing_file(check: Validator, recipe: Path, keypath: tuple, item: str, problem: str) -> Path:
    found = recipe.parent / os.path.expanduser(item)
    if not found.is_file():
        check.fail(keypath, f"{item!r} {problem} (looked for {found})")
    return found.resolve()


# ------------------------------------------------------------------ cache key

def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tree_fingerprint(root: Path) -> str:
    """A local tree's identity: every file's path, size and mtime (no content reads,
    so a kernel tree takes about a second); .git and editor droppings do not count."""
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(files):
            full = os.path.join(folder, name)
            st = os.lstat(full)
            digest.update(f"{os.path.relpath(full, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def compiler_identity(arch: str = HOST.name) -> str:
    target = get_arch(arch)
    package = target.cross_package if target.cross_compile else "build-essential"
    proc = run_tool([target.cc, "--version"], f"asking the compiler its version ({arch} kernel "
                    f"recipes need {package})", TOOL_SECONDS)
    return proc.stdout.splitlines()[0]


def recipe_inputs(recipe: Recipe, source_identity: str, cache_dir: Path | None = None) -> dict:
    """Everything a build depends on, as recorded next to its outputs.  Built-in lab
    keys count by their certificate's fingerprint (the key pair lives in cache_dir)."""
    inputs = {
        "format": BUILD_FORMAT,
        "source": source_identity,
        "patches": [{"name": p.name, "sha256": _sha256_file(p)} for p in recipe.patches],
        "base": recipe.base if recipe.base in BASE_TARGETS
        else {"file": recipe.base, "sha256": _sha256_file(Path(recipe.base))},
        "fragments": [{"name": f.name, "sha256": _sha256_file(f)} for f in recipe.fragments],
        "compiler": compiler_identity(recipe.arch),
        # only cross builds carry the key, so the host's recipes keep their cache keys
        **({"arch": recipe.arch} if recipe.arch != HOST.name else {}),
    }
    if recipe.trusted_keys:
        if cache_dir is None:
            raise ValueError("a recipe with trusted_keys needs the cache directory")
        inputs["trusted_keys"] = [{"name": name, "sha256": key_pair(cache_dir, name).fingerprint()}
                                  for name in recipe.trusted_keys]
    return inputs


def cache_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ sources

def debian_version(package: str) -> str:
    """The installed version of linux-source-X.Y, else the one the archive offers."""
    return installed_version(package) or apt_show(package)["Version"]


def debian_source(package: str, version: str, cache_dir: Path, progress: Progress) -> Path:
    """The unpacked tree of Debian's linux-source-X.Y, from /usr/src or downloaded."""
    dest = package_dir(cache_dir / "kernel-src", package, version)
    with locked(dest.with_name(dest.name + ".lock")):
        if not dest.exists():
            tarball = Path("/usr/src") / f"{package}.tar.xz"
            if installed_version(package) != version or not tarball.is_file():
                progress.say(f"downloading {package} {version} ...")
                debs = dest.with_name(dest.name + ".deb")
                if not debs.exists():
                    download_and_unpack(package, version, debs)
                tarball = debs / "usr" / "src" / tarball.name
            _unpack(tarball, dest, progress)
    trees = [d for d in dest.iterdir() if (d / "Makefile").is_file()]
    if len(trees) != 1:
        raise InfraError(f"{dest}: expected one kernel tree in the unpacked source, found {len(trees)}")
    return trees[0]


def source_identity(recipe: Recipe) -> str:
    """What the source is, cheaply: package and version, or a local tree's fingerprint."""
    if recipe.source_package:
        return f"{recipe.source_package} {debian_version(recipe.source_package)}"
    assert recipe.source_path is not None, "a recipe has a package or a tree"
    return f"tree {recipe.source_path} {tree_fingerprint(recipe.source_path)}"


def _unpack(tarball: Path, dest: Path, progress: Progress) -> None:
    progress.say(f"unpacking {tarball} ...")
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    run_tool(["tar", "-xf", str(tarball), "-C", str(partial)], f"unpacking {tarball}", UNPACK_SECONDS)
    os.replace(partial, dest)


# ------------------------------------------------------------------ patches

def private_copy(tree: Path, dest: Path) -> None:
    """A copy of the tree that patches may change: hard links where the file system
    allows (seconds for a kernel tree), a real copy otherwise.  .git stays behind."""
    ignore = shutil.ignore_patterns(".git")
    try:
        shutil.copytree(tree, dest, symlinks=True, ignore=ignore, copy_function=os.link)
    except (shutil.Error, OSError):
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(tree, dest, symlinks=True, ignore=ignore)


def apply_patch(patch: Path, tree: Path) -> None:
    """Apply one patch with GNU patch; a failure names the patch, the file and the hunk.

    patch(1) writes a new file and renames it into place, so a hard-linked
    original is never written through."""
    proc = run_tool(["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch",
                     "--reject-file=-", "--fuzz=0", "-i", str(patch)], f"applying {patch.name}",
                    TOOL_SECONDS, cwd=tree, check=False)
    if proc.returncode != 0:
        raise PatchError(describe_patch_failure(patch, proc.stdout + proc.stderr))


def describe_patch_failure(patch: Path, output: str) -> str:
    """One message: which patch, which file, which hunk (with its @@ header), which line."""
    hunks = _hunk_headers(patch)
    failures: list[str] = []
    current = ""
    for line in output.splitlines():
        if m := PATCHING_FILE.match(line):
            current = m[1]
        elif m := HUNK_FAILED.match(line):
            number, at = int(m[1]), int(m[2])
            header = hunks.get((current, number), "")
            failures.append(f"{current}: hunk #{number} {header} FAILED at line {at}".replace("  ", " "))
    if not failures:
        detail = " ".join(output.split())[-400:]
        return f"patch {patch.name} does not apply: {detail} ({patch})"
    return f"patch {patch.name} does not apply: " + "; ".join(failures) + f" ({patch})"


def _hunk_headers(patch: Path) -> dict[tuple[str, int], str]:
    try:
        files = unidiff.PatchSet.from_filename(str(patch))
    except (unidiff.UnidiffParseError, OSError, UnicodeDecodeError):
        return {}
    return {(f.path, i): str(h).splitlines()[0] for f in files for i, h in enumerate(f, 1)}


# ------------------------------------------------------------------ config

def fragment_expectations(fragment: Path) -> list[tuple[int, str, str]]:
    """(line, symbol, value) for every CONFIG_ line of a fragment; 'n' for 'is not set'."""
    out = []
    for number, line in enumerate(fragment.read_text().splitlines(), 1):
        if m := CONFIG_LINE.match(line.strip()):
            out.append((number, m[1] or m[3], m[2] if m[1] else "n"))
    return out


def check_fragments(fragments: tuple[Path, ...], config_text: str) -> None:
    """Every fragment line must survive olddefconfig; else name the file, line and symbol."""
    final = config_values(config_text)
    for fragment in fragments:
        for number, symbol, wanted in fragment_expectations(fragment):
            got = final.get(symbol, "n")
            if got != wanted:
                raise ConfigError(f"{symbol}={wanted} did not survive 'make olddefconfig' "
                                  f"(final .config: {symbol}={got}); a dependency of it is "
                                  "missing from the fragment or the base", str(fragment), number)


# ------------------------------------------------------------------ building

@dataclass(frozen=True)
class Plan:
    """A recipe's cache key and where its build lives, known before building."""

    recipe: Recipe
    inputs: dict
    key: str
    directory: Path

    @property
    def cached(self) -> bool:
        return (self.directory / "build.json").is_file()

    def build(self, cache_hit: bool) -> Build:
        meta = json.loads((self.directory / "build.json").read_text())
        return Build(key=self.key, directory=self.directory, release=meta["release"],
                     inputs=self.inputs, cache_hit=cache_hit)


def plan_recipe(recipe: Recipe, cache_dir: Path) -> Plan:
    inputs = recipe_inputs(recipe, source_identity(recipe), cache_dir)
    key = cache_key(inputs)
    return Plan(recipe, inputs, key, cache_dir / "kernel-builds" / key)


def build_recipe(recipe: Recipe, cache_dir: Path, progress: Progress, log_dir: Path,
                 jobs: int | None = None) -> Build:
    """The cached build for this recipe, building it (with all cores) if there is none.
    A fresh build's log (or a failed one's) is copied to log_dir."""
    plan = plan_recipe(recipe, cache_dir)
    with locked(plan.directory.with_name(plan.key + ".lock")):
        if plan.cached:
            return plan.build(cache_hit=True)
        if recipe.source_package:
            tree = debian_source(recipe.source_package, plan.inputs["source"].split(" ", 1)[1],
                                 cache_dir, progress)
        else:
            assert recipe.source_path is not None, "a recipe has a package or a tree"
            tree = recipe.source_path
        _build(plan, tree, progress, log_dir, jobs or os.cpu_count() or 1)
    return plan.build(cache_hit=False)


def _build(plan: Plan, tree: Path, progress: Progress, log_dir: Path, jobs: int) -> None:
    """Patch, configure and make in a private work directory; publish it only when done."""
    recipe, key, final = plan.recipe, plan.key, plan.directory
    work = final.with_name(f".work-{key}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = work / "build.log"
    kept_log = log_dir / f"build-{recipe.name}-{key}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    start = time.monotonic()
    log.write_text(f"recipe {recipe.name} ({recipe.path})\nkey {key}\n"
                   f"inputs {json.dumps(plan.inputs, indent=2)}\n")
    try:
        progress.say(f"building {recipe.name} (key {key}) from {plan.inputs['source']} "
                     f"with {jobs} jobs; log: {kept_log}")
        src, obj = _patched_source(recipe, tree, work / "src", log, progress), work / "obj"
        make = ["make", "-C", str(src), f"O={obj}", f"LOCALVERSION=-lab-{key[:8]}",
                *ccache.build_identity(), *get_arch(recipe.arch).kbuild]
        make, env, stats_log = _with_ccache(make, recipe, final.parent.parent, work, progress)
        _configure(recipe, src, obj, make, log, progress,
                   _trusted_keys_fragment(recipe, plan.directory.parent.parent, work), env)
        _make(make + [f"-j{jobs}", get_arch(recipe.arch).boot_target], log, "building", progress, env=env)
        cached = _ccache_record(stats_log, log)
        release = _publish(plan, obj, work / "out", log, jobs, round(time.monotonic() - start, 1), cached)
        progress.say(f"built {recipe.name} {release} in {time.monotonic() - start:.0f} s "
                     f"({_ccache_summary(cached)}) -> {final}")
    except (BuildError, ConfigError) as exc:
        with log.open("a") as f:
            f.write(f"\n{exc}\n")
        raise type(exc)(f"{recipe.name}: {exc}\n(build log: {kept_log})") from None
    finally:
        shutil.copy2(log, kept_log)
        shutil.rmtree(work, ignore_errors=True)


def _with_ccache(make: list[str], recipe: Recipe, cache_dir: Path, work: Path,
                 progress: Progress) -> tuple[list[str], dict[str, str] | None, Path | None]:
    """The make line and environment that compile through ccache, when it is installed."""
    binary = ccache.available()
    if binary is None:
        progress.say("ccache is not installed (Debian package ccache): every object is compiled")
        return make, None, None
    stats_log = work / "ccache-stats.log"
    return (make + ccache.make_args(binary, get_arch(recipe.arch).cc, work),
            {**os.environ, **ccache.environment(cache_dir, stats_log)}, stats_log)


def _ccache_record(stats_log: Path | None, log: Path) -> dict:
    """build.json's ccache entry: this build's hits and misses (also written to the log)."""
    binary = ccache.available()
    record = {"used": False, "reason": "ccache is not installed"} if stats_log is None or binary is None \
        else {"used": True, "version": ccache.version(binary), **ccache.stats(stats_log)}
    with log.open("a") as f:
        f.write(f"ccache: {json.dumps(record)}\n")
    return record


def _ccache_summary(record: dict) -> str:
    if not record["used"]:
        return "no ccache"
    return f"ccache: {record['hits']} hits, {record['misses']} misses of {record['calls']} compiler calls"


def _patched_source(recipe: Recipe, tree: Path, copy: Path, log: Path, progress: Progress) -> Path:
    """The source make reads: a hard-linked copy in the work directory (patched if the recipe
    has patches).  Every recipe built from the lab's unpacked Debian source then compiles at
    the same paths, so ccache's hashes match across recipes with and without patches
    (tiny-6.12 after tiny-6.12-serial: hits instead of a cold compile).  A tree of the
    user's own (perhaps on another file system, where the copy would be a real one) is read
    in place when there is nothing to patch (make O= only reads it)."""
    in_cache = tree.is_relative_to(copy.parent.parent.parent)  # <cache>/kernel-builds/.work-KEY/src
    if not recipe.patches and not in_cache:
        return tree
    progress.say(f"copying the source tree (hard links) and applying {len(recipe.patches)} patch(es)")
    private_copy(tree, copy)
    for patch in recipe.patches:
        apply_patch(patch, copy)
        with log.open("a") as f:
            f.write(f"applied {patch}\n")
    return copy


def _publish(plan: Plan, obj: Path, out: Path, log: Path, jobs: int, seconds: float,
             ccache_record: dict) -> str:
    """Copy the outputs and build.json next to each other, then move them in at once."""
    out.mkdir()
    for name, rel in {**OUTPUTS, **dict(get_arch(plan.recipe.arch).outputs)}.items():
        shutil.copy2(obj / rel, out / name)
    release = (obj / "include" / "config" / "kernel.release").read_text().strip()
    shutil.copy2(log, out / "build.log")
    (out / "build.json").write_text(json.dumps(
        {"recipe": plan.recipe.name, "key": plan.key, "release": release, "inputs": plan.inputs,
         "jobs": jobs, "seconds": seconds, "ccache": ccache_record}, indent=2) + "\n")
    os.replace(out, plan.directory)
    return release


def _trusted_keys_fragment(recipe: Recipe, cache_dir: Path, work: Path) -> Path | None:
    """A generated fragment naming the lab certificate(s) to build in: its path is in
    this machine's cache, so it cannot be a line of a committed fragment."""
    if not recipe.trusted_keys:
        return None
    if len(recipe.trusted_keys) > 1:  # CONFIG_SYSTEM_TRUSTED_KEYS names one PEM file
        raise ConfigError("trusted_keys: only one key can be built in", str(recipe.path))
    cert = key_pair(cache_dir, recipe.trusted_keys[0]).cert
    fragment = work / "trusted-keys.config"
    fragment.write_text(f"# generated: the lab key {recipe.trusted_keys[0]!r} (signing.py)\n"
                        f'CONFIG_SYSTEM_TRUSTED_KEYS="{cert}"\n')
    return fragment


def _configure(recipe: Recipe, src: Path, obj: Path, make: list[str], log: Path,
               progress: Progress, keys_fragment: Path | None = None,
               env: dict[str, str] | None = None) -> None:
    obj.mkdir(parents=True, exist_ok=True)
    if recipe.base in BASE_TARGETS:
        _make(make + [recipe.base], log, f"config ({recipe.base})", progress, env=env)
    else:
        shutil.copy2(recipe.base, obj / ".config")
    fragments = recipe.fragments + ((keys_fragment,) if keys_fragment else ())
    if fragments:
        _make([str(src / "scripts" / "kconfig" / "merge_config.sh"), "-m", "-O", str(obj),
               str(obj / ".config"), *map(str, fragments)], log, "config (merge)", progress,
              cwd=src, env=env)
    _make(make + ["olddefconfig"], log, "config (olddefconfig)", progress, env=env)
    check_fragments(fragments, (obj / ".config").read_text())


def _make(argv: list[str], log: Path, stage: str, progress: Progress, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> None:
    """Run one build step into the log, saying every few seconds where it is."""
    steps, last, next_say = 0, "", time.monotonic() + PROGRESS_SECONDS
    with open(log, "a", encoding="utf-8", errors="replace") as f:
        f.write(f"$ {' '.join(argv)}\n")
        f.flush()
        # a process group of its own, so that a stop kills make's compilers too
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", process_group=0)
        assert proc.stdout is not None  # stdout=PIPE
        try:
            for line in proc.stdout:
                f.write(line)
                if KBUILD_STEP.match(line):
                    steps, last = steps + 1, line.strip()
                if time.monotonic() >= next_say:
                    progress.say(f"{stage}: {steps} steps, last: {last or line.strip()[:100]}")
                    next_say = time.monotonic() + PROGRESS_SECONDS
            code = proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise BuildError(f"{stage} failed (exit {code}); the log is kept in the artifacts "
                         "directory (kernel-builds/); its last lines:\n  " + "\n  ".join(tail))


# ------------------------------------------------------------------ a tree the caller owns

@dataclass(frozen=True)
class TreeBuild:
    """A build of a caller's tree into an object directory the caller keeps (`labctl bisect`)."""

    obj: Path
    release: str
    seconds: float
    arch: str

    def output(self, name: str) -> Path:
        """One output by its cached name (bzImage, config...) inside the object directory."""
        return self.obj / {**OUTPUTS, **dict(get_arch(self.arch).outputs)}[name]


def build_tree(recipe: Recipe, src: Path, obj: Path, cache_dir: Path, log: Path, progress: Progress,
               jobs: int | None = None) -> TreeBuild:
    """Build `src` as is (applying the recipe's patches is the caller's business) with the
    recipe's config into `obj`.  Nothing is cached or published: the object directory is
    reused as it is, so make rebuilds only what changed since the last call (a git checkout
    rewrites only the files it changes).  The config is made again each time (the tree's
    Kconfig may differ); kconfig rewrites only the include/config files that change."""
    start = time.monotonic()
    make = ["make", "-C", str(src), f"O={obj}", "LOCALVERSION=-lab-tree",
            "KBUILD_BUILD_USER=kexec-lab", "KBUILD_BUILD_HOST=kexec-lab", *get_arch(recipe.arch).kbuild]
    with log.open("a") as f:
        f.write(f"recipe {recipe.name} ({recipe.path}) on the tree {src}, objects in {obj}\n")
    try:
        _configure(recipe, src, obj, make, log, progress,
                   _trusted_keys_fragment(recipe, cache_dir, obj.parent))
        _make(make + [f"-j{jobs or os.cpu_count() or 1}", get_arch(recipe.arch).boot_target], log,
              "building", progress)
    except (BuildError, ConfigError) as exc:
        with log.open("a") as f:
            f.write(f"\n{exc}\n")
        raise type(exc)(f"{recipe.name} on {src}: {exc}\n(build log: {log})") from None
    release = (obj / "include" / "config" / "kernel.release").read_text().strip()
    return TreeBuild(obj, release, round(time.monotonic() - start, 1), recipe.arch)


# ------------------------------------------------------------------ the catalogue

def entry_recipe(lab: LabConfig, entry: KernelEntry) -> Recipe:
    assert entry.recipe, "a recipe entry"
    return load_recipe(lab.path.parent / entry.recipe, entry.name)


def recipe_kernel(lab: LabConfig, entry: KernelEntry, jobs: int | None = None) -> Kernel:
    """A catalogue recipe as a bootable Kernel: built on first use, a cache hit after."""
    build = build_entry(lab, entry.name, jobs)
    return Kernel(name=entry.name, bzimage=build.bzimage, release=build.release,
                  config=build.config, recipe=build.describe(), arch=build.arch,
                  kexec_image=build.kexec_image)


def build_entry(lab: LabConfig, name: str, jobs: int | None = None) -> Build:
    """`labctl kernel build NAME`: the catalogue entry must be a recipe."""
    entry = lab.kernels.get(name)
    if entry is None or not entry.recipe:
        recipes = sorted(n for n, e in lab.kernels.items() if e.recipe)
        raise ConfigError(f"{name!r} is not a recipe kernel in the catalogue "
                          f"(recipes: {', '.join(recipes) or 'none'})", str(lab.path))
    return build_recipe(entry_recipe(lab, entry), lab.cache_dir, Progress(f"kernel {name}"),
                        lab.artifacts_dir / "kernel-builds", jobs)
