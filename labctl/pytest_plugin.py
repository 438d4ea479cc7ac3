"""pytest plugin: each scenario file is a test item, parametrized over the selected kernels.

Opt-in, so a plain `pytest` stays cheap: items are collected only with --lab,
--lab-kernel or --lab-scenario, e.g.

    pytest scenarios --lab-kernel debian-6.12 --lab-kernel debian-6.1 -n 2 --junitxml=lab.xml

Each item runs its pair exactly as `labctl matrix` does (a `labctl run` child,
retried once after an infrastructure error), so -n N (pytest-xdist) runs N
guests at a time.  An infrastructure error is raised during setup, so pytest
and JUnit report it as an error, not a failure; a pair in the catalogue's
expect_fail is xfailed, and one that passes anyway fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.artifacts import new_run_id
from labctl.campaigns.matrix import MatrixRun, Pair, resolve_kernels
from labctl.config.schema import LabConfig, load_lab
from labctl.report.render import ERROR, FAIL, SKIP, XFAIL, XPASS, Cell, evidence_summary

SCENARIO_DIR = "scenarios"


class LabPairError(Exception):
    """The lab broke before a verdict (reported as an error)."""


class LabVerdictFailure(Exception):
    """The verdict did not match the scenario's expectation."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kexec-lab", "kernel x scenario pairs from scenarios/*.yaml")
    group.addoption("--lab", action="store_true", help="collect scenario files as test items "
                    "(all kernels, all scenarios unless narrowed below)")
    group.addoption("--lab-kernel", action="append", default=[], metavar="NAME",
                    help="catalogue kernel to run the scenarios on (repeatable; default: all)")
    group.addoption("--lab-scenario", action="append", default=[], metavar="NAME",
                    help="scenario name to collect (repeatable; default: all)")
    group.addoption("--lab-config", default=None, metavar="PATH",
                    help="lab.yaml (default: as labctl finds it)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: a kernel x scenario pair from scenarios/ (opt-in)")


def _opted_in(config: pytest.Config) -> bool:
    return bool(config.getoption("--lab") or config.getoption("--lab-kernel")
                or config.getoption("--lab-scenario"))


LAB = pytest.StashKey[LabConfig]()
RUN_ID = pytest.StashKey[str]()
PINS = pytest.StashKey[dict]()  # kernel -> the package pins its pairs run with


def _lab(config: pytest.Config) -> LabConfig:
    if LAB not in config.stash:
        from labctl.cli import default_lab_path
        config.stash[LAB] = load_lab(Path(config.getoption("--lab-config") or default_lab_path()))
        config.stash[RUN_ID] = new_run_id()
        config.stash[PINS] = {}
    return config.stash[LAB]


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if (file_path.suffix == ".yaml" and file_path.parent.name == SCENARIO_DIR
            and _opted_in(parent.config)):
        wanted = parent.config.getoption("--lab-scenario")
        if not wanted or file_path.stem in wanted:
            return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFile(pytest.File):
    """A scenario file: one item per selected kernel."""

    def collect(self):
        lab = _lab(self.config)
        kernels = self.config.getoption("--lab-kernel") or sorted(lab.kernels)
        for kernel in kernels:
            if kernel not in lab.kernels:
                raise pytest.UsageError(f"--lab-kernel {kernel!r} is not in {lab.path} "
                                        f"({', '.join(sorted(lab.kernels))})")
            expect_fail = (getattr(lab.kernels[kernel], "expect_fail", None) or {}).get(self.path.stem)
            pair = Pair(kernel, self.path.stem, self.path.resolve(), expect_fail)
            yield PairItem.from_parent(self, name=kernel, pair=pair)


class PairItem(pytest.Item):
    """One kernel x scenario pair, run in a child process in setup, judged in the call."""

    def __init__(self, *, pair: Pair, **kwargs):
        super().__init__(**kwargs)
        self.pair = pair
        self.cell: Cell | None = None
        self.add_marker(pytest.mark.lab)

    def setup(self) -> None:
        lab = _lab(self.config)
        pins = self.config.stash[PINS]
        if self.pair.kernel not in pins:  # once per kernel and process, as the matrix does
            pins[self.pair.kernel] = resolve_kernels(lab, [self.pair.kernel])
        run = MatrixRun(lab, self.config.stash[RUN_ID], jobs=1, pins=pins[self.pair.kernel])
        self.cell = cell = run.run([self.pair])[0]
        for name in ("outcome", "expected"):
            self.user_properties.append((name, str(cell.result.get(name))))
        self.user_properties.append(("artifacts", str(cell.directory)))
        self.user_properties.append(("serial_log", str(cell.directory / "serial.log")))
        self.add_report_section("setup", "artifacts", str(cell.directory))
        if cell.status == ERROR:
            raise LabPairError(evidence_summary(cell.result))

    def runtest(self) -> None:
        assert self.cell is not None, "setup ran the pair"
        status = self.cell.status
        if status == SKIP:  # the scenario does not apply to this kernel (the reason says why)
            pytest.skip(str(self.cell.result.get("reason")))
        if status == XFAIL:
            pytest.xfail(f"expected failure: {self.pair.expect_fail}")
        if status == XPASS:
            raise LabVerdictFailure(f"passed, but expect_fail says: {self.pair.expect_fail}")
        if status == FAIL:
            raise LabVerdictFailure(evidence_summary(self.cell.result))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, (LabPairError, LabVerdictFailure)):
            where = f"\n  artifacts: {self.cell.directory}" if self.cell else ""
            return f"{self.pair.key}: {excinfo.value}{where}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{self.pair.key}"
