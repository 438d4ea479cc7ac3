"""pytest configuration shared by the whole suite.

Unit tests (tests/unit) run on recorded transcripts under tests/data; end-to-end
tests (tests/e2e, marked `e2e`) boot real QEMU guests with real kernels.  An
end-to-end test never skips for lack of QEMU or a kernel: `make test` installs
them, and a missing one is a failure to see, not a pass to hide.  The one opt-in is the
`full` mark (the whole catalogue, many minutes): skipped with that reason unless --full.
"""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tests"))

# Scenario files as test items, parametrized over kernels; only with --lab,
# --lab-kernel or --lab-scenario (see labctl/pytest_plugin.py).
pytest_plugins = ["labctl.pytest_plugin"]


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true",
                     help="also run the tests marked `full` (the whole catalogue; make test-full)")


def pytest_collection_modifyitems(config, items):
    """Tests over the whole catalogue run with --full only: CI's `make test` stays inside its
    time budget, and says which it left to `make test-full`."""
    if config.getoption("--full"):
        return
    skip = pytest.mark.skip(reason="the whole catalogue: runs with --full (make test-full)")
    for item in items:
        if item.get_closest_marker("full"):  # the mark, not a test id such as test_faults' "full"
            item.add_marker(skip)
