"""`labctl bisect --debian PACKAGE`: bisect the Debian kernel versions the archive holds.

Debian ships each kernel version as its own package, the ABI in the name
(linux-image-6.12.115+deb12-cloud-amd64, linux-image-6.1.0-50-cloud-amd64); the
metapackages (linux-image-6.12-cloud-amd64, linux-image-cloud-amd64) only follow the
newest.  So PACKAGE names a flavour (cloud-amd64) and, if it carries one, a series
(6.12): the candidates are every versioned linux-image package of that flavour
and series that `apt-cache madison` can fetch, ordered by dpkg's version order.
--good and --bad name a version (6.12.100-1~deb12u1, or just 6.12.100) or a package.
No builds: each step downloads (once, cached) and boots the packaged kernel.
"""

from __future__ import annotations

import functools
import itertools
import re
import time
from dataclasses import asdict, dataclass

from labctl.campaigns.bisect_report import (
    BAD,
    GOOD,
    SKIP,
    Step,
    Untrusted,
    check_end,
    classify,
    estimate_steps,
    progress_line,
    result_exit_code,
)
from labctl.campaigns.bisect_steps import Bisection
from labctl.errors import ConfigError, InfraError, Interrupted, LabError
from labctl.kernel.debian import download_and_unpack, package_dir
from labctl.kernel.image import Kernel
from labctl.kernel.providers import cached_debian_kernel
from labctl.progress import say
from labctl.tools import run_tool

FAMILY = re.compile(r"^linux-image-(?:(?P<series>\d+\.\d+)[.\d]*(?:-\d+)?(?:\+deb\d+)?-)?"
                    r"(?P<flavour>[a-z][a-z0-9]*(?:-[a-z0-9]+)*)$")
# a version in the name (6.12.115+deb12, 6.1.0-50), not a metapackage's series (6.12)
VERSIONED = re.compile(r"^linux-image-(?P<series>\d+\.\d+)\.\d+(?:-\d+)?(?:\+deb\d+)?-(?P<flavour>.+)$")
RUNS = re.compile(r"(\d+)")
APT_SECONDS = 120.0


@dataclass(frozen=True)
class Version:
    package: str
    version: str

    def to_json(self) -> dict:
        return asdict(self)

    def matches(self, wanted: str) -> bool:
        """6.12.100-1~deb12u1, its upstream part 6.12.100, or the package name."""
        return wanted in (self.version, self.version.split("-", 1)[0], self.package)


def family(package: str) -> tuple[str | None, str]:
    """(series or None, flavour) of a linux-image package name, or exit 2."""
    m = FAMILY.match(package)
    if not m:
        raise ConfigError(f"--debian {package}: not a Debian kernel image package name "
                          "(e.g. linux-image-6.12-cloud-amd64 or linux-image-cloud-amd64)")
    return m["series"], m["flavour"]


def parse_madison(text: str) -> list[Version]:
    """`apt-cache madison` lines (package | version | source) as Versions, each once."""
    seen: dict[tuple[str, str], Version] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 3 and parts[0] and parts[1]:
            seen.setdefault((parts[0], parts[1]), Version(parts[0], parts[1]))
    return list(seen.values())


def _dpkg_cmp(a: Version, b: Version) -> int:
    if a.version == b.version:
        return 0
    lt = run_tool(["dpkg", "--compare-versions", a.version, "lt", b.version], "comparing versions",
                  APT_SECONDS, check=False).returncode == 0
    return -1 if lt else 1


def _natural(version: Version) -> tuple:
    """A first guess at dpkg's order ('~' before anything, numbers as numbers)."""
    return tuple((0, int(run), "") if run.isdigit() else (1, 0, run.replace("~", "\0"))
                 for run in RUNS.split(version.version) if run)


def dpkg_sorted(versions: list[Version]) -> list[Version]:
    """Oldest first by dpkg's rules: a natural sort that dpkg confirms pair by pair
    (n-1 dpkg calls), or a sort by dpkg's comparisons where it does not."""
    guess = sorted(versions, key=_natural)
    if all(_dpkg_cmp(a, b) <= 0 for a, b in itertools.pairwise(guess)):
        return guess
    return sorted(versions, key=functools.cmp_to_key(_dpkg_cmp))


def archive_versions(package: str) -> list[Version]:
    """Every fetchable version of the package's flavour (and series), oldest first."""
    series, flavour = family(package)
    names = run_tool(["apt-cache", "pkgnames", "linux-image-"], "listing kernel packages",
                     APT_SECONDS).stdout.split()
    members = sorted(n for n in names if (m := VERSIONED.match(n)) and m["flavour"] == flavour
                     and (series is None or m["series"] == series))
    if not members:
        raise ConfigError(f"--debian {package}: the archive has no versioned package of the "
                          f"{flavour} flavour{' in ' + series if series else ''}; run apt-get update, "
                          "or check the name with `apt-cache search linux-image`")
    proc = run_tool(["apt-cache", "madison", *members], "asking the archive for versions", APT_SECONDS)
    return dpkg_sorted(parse_madison(proc.stdout))


def pick_range(versions: list[Version], good: str, bad: str, package: str) -> list[Version]:
    """The versions from good to bad, both included; exit 2 naming what exists."""
    def find(wanted: str, flag: str) -> int:
        hits = [i for i, v in enumerate(versions) if v.matches(wanted)]
        if not hits:
            have = ", ".join(v.version for v in versions)
            raise ConfigError(f"{flag} {wanted}: no such version of {package} in the archive "
                              f"(it has: {have})")
        return hits[0]
    lo, hi = find(good, "--good"), find(bad, "--bad")
    if lo >= hi:
        raise ConfigError(f"--good {good} is not older than --bad {bad}: give the older, passing "
                          "version as --good")
    return versions[lo:hi + 1]


def versions_between(package: str, good: str, bad: str) -> list[Version]:
    return pick_range(archive_versions(package), good, bad, package)


def kernel_for(cache_dir, version: Version) -> Kernel:
    """The packaged kernel of one version: downloaded and unpacked once into the cache."""
    dest = package_dir(cache_dir / "kernels", version.package, version.version)
    if not dest.exists():
        say(f"bisect: downloading {version.package} {version.version} ...")
        download_and_unpack(version.package, version.version, dest)
    kernel = cached_debian_kernel(version.version, cache_dir, version.package, version.version)
    if kernel is None:
        raise InfraError(f"{version.package} {version.version} holds no /boot/vmlinuz-*")
    return kernel


def next_probe(codes: dict[int, int], size: int) -> tuple[int | None, int, int]:
    """(index to test next or None, lowest bad, highest good) from the verdicts so far:
    the untested index nearest the middle of the range still open."""
    lo = max((i for i, c in codes.items() if c == GOOD), default=0)
    hi = min((i for i, c in codes.items() if c == BAD), default=size - 1)
    open_ = [i for i in range(lo + 1, hi) if i not in codes]
    if not open_:
        return None, hi, lo
    middle = (lo + hi) / 2
    return min(open_, key=lambda i: (abs(i - middle), i)), hi, lo


class DebianBisection:
    """Binary search over the archive's versions, with the shared step machinery."""

    def __init__(self, lab, scenario, runs, out, report):
        self.base = Bisection(lab, scenario, runs, out, report)
        self.versions = [Version(**v) for v in report["versions"]]

    def run(self) -> int:
        base = self.base
        try:
            codes = self.ends()
            while True:
                probe, hi, lo = next_probe(codes, len(self.versions))
                if probe is None:
                    break
                left = sum(1 for i in range(lo + 1, hi) if i not in codes)
                codes[probe] = self.test(probe, "step", left).code
            skipped = [self.versions[i].version for i in range(lo + 1, hi) if codes.get(i) == SKIP]
            first = self.versions[hi]
            if skipped:
                base.report["candidates"] = skipped + [first.version]
            else:
                base.report["first_bad"] = {"sha": first.version, "subject": first.package,
                                            "author": "", "date": "", "files": []}
            base.report["revert"] = {"applies": False, "passed": None, "summary":
                                     "Not applicable: package versions have no single commit to revert."}
            base.report["log"] = self.log()
            base.save("done")
            say(f"bisect: first bad version {first.package} {first.version}" if not skipped else
                f"bisect: skipped versions left; the first bad is one of {base.report['candidates']}")
            return result_exit_code(base.report)
        except Interrupted as exc:
            base.report["log"] = self.log()
            return base.stopped(str(exc))
        except LabError as exc:  # the report says why it stopped (an end, or the lab)
            base.report["message"] = str(exc)
            base.save("aborted" if isinstance(exc, Untrusted) else "failed")
            raise

    def ends(self) -> dict[int, int]:
        """Verdicts by version index; both ends tested first (a resumed report has them)."""
        base, codes = self.base, {}
        by_rev = {s.rev: s for s in base.steps}
        for role, index in (("bad end", len(self.versions) - 1), ("good end", 0)):
            step = by_rev.get(self.versions[index].version) or self.test(index, role, len(self.versions) - 2)
            check_end(step, base.scenario.name)
            codes[index] = step.code
        codes.update({i: by_rev[v.version].code for i, v in enumerate(self.versions)
                      if v.version in by_rev and by_rev[v.version].role == "step"})
        return codes

    def test(self, index: int, role: str, left: int) -> Step:
        base, version = self.base, self.versions[index]
        step = Step(role, version.version, version.package)
        number = base.next_index()
        base.where = progress_line(number, version.version, version.package, left,
                                   estimate_steps(left + 1), f"{role}: running")
        base.progress.say(base.where)
        try:
            kernel = kernel_for(base.lab.cache_dir, version)
        except InfraError as exc:
            step.code, step.reason = SKIP, f"cannot fetch it: {exc}"
            return base.record(step)
        t0 = time.monotonic()
        step.runs = base.run_kernel(kernel, number)
        step.run_seconds = round(time.monotonic() - t0, 1)
        step.code, step.reason = classify(step.runs)
        return base.record(step)

    def log(self) -> str:
        """git's bisect log layout, for versions: one verdict line per tested version."""
        lines = [f"# {s.verdict}: [{s.rev}] {s.label} ({s.role})" for s in self.base.steps]
        return "\n".join(lines) + ("\n" if lines else "")
