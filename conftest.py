"""pytest configuration shared by the whole suite.

Unit tests (tests/unit) run on recorded transcripts under tests/data; end-to-end
tests (tests/e2e, marked `e2e`) boot real QEMU guests with real kernels.  An
end-to-end test never skips for lack of QEMU or a kernel: `make test` installs
them, and a missing one is a failure to see, not a pass to hide.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tests"))

# Scenario files as test items, parametrized over kernels; only with --lab,
# --lab-kernel or --lab-scenario (see labctl/pytest_plugin.py).
pytest_plugins = ["labctl.pytest_plugin"]
