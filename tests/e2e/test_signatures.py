"""kexec_file_load's load-time checks end to end: Debian 6.12 locked down.

Locked down, Debian accepts no image the lab has (not even its own signed vmlinuz under
SeaBIOS), so its rejections have no follow-up load (then_intact: false in the scenarios).
"""

from __future__ import annotations

import errno

import pytest

from conftest import labctl

pytestmark = pytest.mark.e2e

LOCKDOWN_LINE = "Lockdown: kexec-lab-helpe: kexec of unsigned images is restricted"


def _passed(run):
    assert run.returncode == 0, run.stdout + run.stderr
    return run


@pytest.fixture(scope="module")
def debian():
    return _passed(labctl("run", "lockdown-own-vmlinuz", "lockdown-unsigned", "--kernel", "debian-6.12"))


def _rejected(result: dict, name: str) -> dict:
    assert result["outcome"] == "load-rejected" and result["passed"], result["reason"]
    load = result["evidence"]["load"]
    assert load["errno"] == getattr(errno, name), (load["errno"], name)
    return load


def test_debian_locked_down_refuses_even_its_own_signed_vmlinuz(debian):
    own = debian.results["lockdown-own-vmlinuz"]
    load = _rejected(own, "EPERM")
    assert load["image"] == "default" and load["image_facts"]["signatures"] == ["/CN=Debian Secure Boot CA"]
    assert LOCKDOWN_LINE in " ".join(load["kernel_log"])
    assert own["evidence"]["kernel_facts"]["lab_key"] is False
    assert "SeaBIOS" in own["expectation_reason"]
    unsigned = debian.results["lockdown-unsigned"]
    _rejected(unsigned, "EPERM")
    assert "recovery" not in unsigned["evidence"]  # then_intact: false, nothing would load
