"""Which kernel did what, on real kernels: a quiet capture kernel that panics, and a
crashed kernel that replays its own log (evidence/identity.py)."""

from __future__ import annotations

import pytest

from conftest import labctl

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["debian-6.12", "debian-6.1"])
def run(request):
    return request.param, labctl("run", "capture-quiet-panic", "unload-then-panic-replay",
                                 "--kernel", request.param)


def votes(result: dict) -> dict[str, str]:
    return {v["signal"]: v["says"] for v in result["evidence"]["verdict"]["identity"]["votes"]}


def test_a_quiet_capture_kernel_that_panics_is_capture_panicked(run):
    """`quiet loglevel=0`: the console shows nothing of the capture kernel, not even its
    panic; where the vCPU runs and the capture kernel's own log in RAM show it panicked."""
    kernel, lab = run
    assert lab.returncode == 0, lab.stdout + lab.stderr
    result = lab.results["capture-quiet-panic"]
    assert (result["outcome"], result["passed"]) == ("capture-panicked", True), result["reason"]
    verdict = result["evidence"]["verdict"]
    assert verdict["cause"] == {"causes": ["no-root-fs"]}
    assert "VFS: Unable to mount root fs" in verdict["log_in_ram"]
    said = votes(result)
    assert said["pc"] == said["ram-end"] == said["ram-cmdline"] == "capture"
    assert "disagreement" not in verdict["identity"]
    serial = (result["_dir"] / "serial.log").read_text()
    assert "Kernel command line:" not in serial and "end Kernel panic" not in serial


def test_a_crashed_kernel_replaying_its_log_is_panic_halted(run):
    """panic_print=0x20 prints the crashed kernel's own banner again after the panic."""
    kernel, lab = run
    result = lab.results["unload-then-panic-replay"]
    assert (result["outcome"], result["passed"]) == ("panic-halted", True), result["reason"]
    serial = (result["_dir"] / "serial.log").read_text()
    assert "Linux version" in serial.split("sysrq: Trigger a crash", 1)[1]
    said = votes(result)
    assert said["pc"] == said["console-cmdline"] == said["panic-message"] == "primary"
    assert set(said.values()) == {"primary"}
