"""Debian packages: what the archive offers (apt-cache), what is installed (dpkg-query),
and one package fetched and unpacked into the cache (apt-get download + dpkg-deb -x).
Used by both kernel providers: Debian kernels (kernel/providers.py) and recipe sources
(kernel/build.py)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

from labctl.config.schema import default_cache_dir
from labctl.errors import InfraError
from labctl.tools import run_tool

LOOKUP_SECONDS = 60.0
DOWNLOAD_SECONDS = 1800.0  # linux-source is ~150 MB
UNPACK_SECONDS = 600.0


# What apt-cache answers from: the package lists, dpkg's status and architectures, apt's
# sources, preferences and configuration.  Same files, same sizes and mtimes: same answer.
APT_STATE_GLOBS = ("/var/lib/apt/lists/*_Packages*", "/var/lib/apt/lists/*Release",
                   "/var/lib/dpkg/status", "/var/lib/dpkg/arch", "/etc/apt/sources.list",
                   "/etc/apt/sources.list.d/*", "/etc/apt/preferences", "/etc/apt/preferences.d/*",
                   "/etc/apt/apt.conf.d/*")


def archive_state() -> str:
    """A fingerprint of the files apt-cache reads (name, size, mtime)."""
    digest = hashlib.sha256()
    for pattern in APT_STATE_GLOBS:
        for path in sorted(Path("/").glob(pattern.lstrip("/"))):
            try:
                st = path.stat()
            except OSError:
                continue
            digest.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def apt_show(package: str, memo_dir: Path | None = None) -> dict[str, str]:
    """The archive's control fields for the candidate version of `package`, remembered per
    archive state: apt-cache takes 1-2 s a call on a host without apt's binary cache
    (Debian's container images set Dir::Cache::pkgcache ""), and `labctl run` asks twice."""
    memo = (memo_dir or default_cache_dir()) / "apt-show" / f"{package}.json"
    state = archive_state()
    try:
        remembered = json.loads(memo.read_text(encoding="utf-8"))
        if remembered.get("archive_state") == state and isinstance(remembered.get("fields"), dict):
            return remembered["fields"]
    except (OSError, ValueError):
        pass
    fields = _apt_cache_show(package)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"archive_state": state, "fields": fields}), encoding="utf-8")
        tmp.replace(memo)
    except OSError:
        pass  # a read-only cache only costs the next call another apt-cache
    return fields


def _apt_cache_show(package: str) -> dict[str, str]:
    proc = run_tool(["apt-cache", "show", "--no-all-versions", package],
                    f"looking up {package} in the package archive", LOOKUP_SECONDS, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise InfraError(f"the package archive does not know {package!r}: "
                         "run 'apt-get update' (as root) and try again")
    fields: dict[str, str] = {}
    key = None
    for line in proc.stdout.splitlines():
        if line[:1].isspace() and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    return fields


def offered_versions(names: list[str]) -> dict[str, str]:
    """Package -> the version the package lists offer, for several packages in one
    apt-cache call (a name may carry ':arch'; the answer is keyed by the bare name)."""
    proc = subprocess.run(["apt-cache", "show", "--no-all-versions", *names], capture_output=True, text=True)
    versions: dict[str, str] = {}
    name = None
    for line in proc.stdout.splitlines():
        if line.startswith("Package: "):
            name = line.split(": ", 1)[1].strip()
        elif line.startswith("Version: ") and name:
            versions.setdefault(name, line.split(": ", 1)[1].strip())
    return versions


def installed_version(package: str) -> str | None:
    """The installed version of `package`, or None when it is not installed."""
    proc = run_tool(["dpkg-query", "-W", "-f=${Status}|${Version}", package],
                    f"asking dpkg whether {package} is installed", LOOKUP_SECONDS, check=False)
    status, _, version = proc.stdout.partition("|")
    return version if proc.returncode == 0 and status.endswith(" installed") else None


def package_dir(root: Path, package: str, version: str) -> Path:
    """Where one version of a package is unpacked under a cache folder: one layout for all."""
    return root / f"{package}_{version}"


def download_and_unpack(package: str, version: str, dest: Path) -> None:
    """`package`=`version`'s files under `dest` (plus a `package` file naming it); the
    tree appears whole or not at all."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".unpack-") as tmp:
        argv = ["apt-get", "download", f"{package}={version}"]
        if os.geteuid() == 0:
            argv[1:1] = ["-o", "APT::Sandbox::User=root"]
        run_tool(argv, f"downloading {package} {version}", DOWNLOAD_SECONDS, cwd=Path(tmp))
        debs = list(Path(tmp).glob("*.deb"))
        if not debs:
            raise InfraError(f"'{' '.join(argv)}' left no .deb file in {tmp}")
        tree = Path(tmp) / "tree"
        unpack_deb(debs[0], tree)
        (tree / "package").write_text(f"{package} {version}\n")
        try:
            os.replace(tree, dest)
        except OSError as exc:  # another process (a parallel matrix pair) unpacked it first
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not (dest / "package").is_file():
                raise


def unpack_deb(deb: Path, tree: Path) -> None:
    """A .deb's files under `tree` (dpkg-deb -x); a broken package is an infrastructure error
    that names the command."""
    run_tool(["dpkg-deb", "-x", str(deb), str(tree)], f"unpacking {deb.name}", UNPACK_SECONDS)
