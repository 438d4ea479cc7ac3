"""kexec_file_load's load-time checks end to end: signatures, lockdown, and both with
purgatory's digest, on the recipe kernels that trust the lab key (tiny-6.12-sig,
tiny-6.12-sig-force; `make recipes` builds them) and on Debian 6.12 locked down.

Every rejection here is followed in the same guest by a load that works and an
intact crash (then_intact), except where the kernel accepts no image the lab has.
"""

from __future__ import annotations

import errno

import pytest

from conftest import labctl

pytestmark = pytest.mark.e2e

BUILD_TIMEOUT = 1800
LAB_SIGNER = "/CN=kexec-lab signing key/O=kexec-lab"
LOCKDOWN_LINE = "Lockdown: kexec-lab-helpe: kexec of unsigned images is restricted"


def _passed(run):
    assert run.returncode == 0, run.stdout + run.stderr
    return run


@pytest.fixture(scope="module")
def sig():
    """tiny-6.12-sig; the lockdown-* scenarios boot it with lockdown=integrity."""
    return _passed(labctl("run", "lockdown-kexec-load", "lockdown-unsigned", "lockdown-wrong-key",
                  "lockdown-tampered", "lockdown-signed-corrupt", "sig-force-wrong-key",
                  "--kernel", "tiny-6.12-sig", timeout=BUILD_TIMEOUT))


@pytest.fixture(scope="module")
def force():
    return _passed(labctl("run", "sig-force-unsigned", "sig-force-wrong-key", "sig-force-tampered",
                          "lockdown-signed-intact", "--kernel", "tiny-6.12-sig-force",
                          timeout=BUILD_TIMEOUT))


@pytest.fixture(scope="module")
def debian():
    return _passed(labctl("run", "lockdown-own-vmlinuz", "lockdown-unsigned", "--kernel", "debian-6.12"))


def _healthy_after(result: dict) -> None:
    recovery = result["evidence"]["recovery"]
    assert recovery["outcome"] == "capture-booted" and recovery["vmcore"]["ok"], recovery


def _rejected(result: dict, name: str) -> dict:
    assert result["outcome"] == "load-rejected" and result["passed"], result["reason"]
    load = result["evidence"]["load"]
    assert load["errno"] == getattr(errno, name), (load["errno"], name)
    return load


def test_lockdown_refuses_kexec_load_and_every_image_that_does_not_verify(sig):
    for scenario in ("lockdown-kexec-load", "lockdown-unsigned", "lockdown-wrong-key",
                     "lockdown-tampered"):
        result = sig.results[scenario]
        load = _rejected(result, "EPERM")
        assert "lockdown=integrity" in result["evidence"]["primary"]["cmdline"]
        assert any(line.startswith("Lockdown: ") and "kexec of unsigned images is restricted"
                   in line for line in load["kernel_log"]), load.get("kernel_log")
        _healthy_after(result)  # the lab-signed default still loads under lockdown
    assert sig.results["lockdown-kexec-load"]["evidence"]["load"]["method"] == "kexec_load"
    unsigned = sig.results["lockdown-unsigned"]["evidence"]["load"]
    assert unsigned["image_facts"]["signatures"] == [] and "PEFILE: Unsigned PE binary" in unsigned["kernel_log"]
    tampered = sig.results["lockdown-tampered"]["evidence"]["load"]
    assert tampered["image_facts"]["signatures"] == [LAB_SIGNER] and "PEFILE: Digest mismatch" in tampered["kernel_log"]
    facts = sig.results["lockdown-unsigned"]["evidence"]["kernel_facts"]
    assert (facts["lab_key"], facts["trusted_lab_keys"]) == (True, ["lab"])  # found in the image


def test_both_layers_a_signed_image_corrupted_after_the_load_is_refused_by_purgatory(sig):
    result = sig.results["lockdown-signed-corrupt"]
    assert result["outcome"] == "purgatory-refused" and result["passed"], result["reason"]
    assert result["evidence"]["load"]["rc"] == 0
    assert result["evidence"]["load"]["image_facts"]["signatures"] == [LAB_SIGNER]
    assert result["evidence"]["corruption"]["verified"]
    assert result["evidence"]["verdict"]["parked"]["segment"]["role"] == "purgatory"


def test_without_force_or_lockdown_a_bad_signature_is_only_noted(sig):
    result = sig.results["sig-force-wrong-key"]
    assert result["outcome"] == "load-accepted" and result["passed"], result["reason"]
    _healthy_after(result)


def test_sig_force_returns_the_verifiers_own_errno(force):
    for scenario, name, line in (("sig-force-unsigned", "ENODATA", "PEFILE: Unsigned PE binary"),
                                 ("sig-force-wrong-key", "ENOKEY", None),
                                 ("sig-force-tampered", "EKEYREJECTED", "PEFILE: Digest mismatch")):
        result = force.results[scenario]
        load = _rejected(result, name)
        code = getattr(errno, name)
        assert f"Enforced kernel signature verification failed (-{code})." in \
            " ".join(load["kernel_log"]), load["kernel_log"]
        assert line is None or line in load["kernel_log"]
        assert "primary" in result["evidence"] and "lockdown" not in result["evidence"]["primary"]["cmdline"]
        _healthy_after(result)


def test_lockdown_lets_a_signed_image_load_and_boot(force):
    result = force.results["lockdown-signed-intact"]
    assert result["outcome"] == "capture-booted" and result["passed"], result["reason"]
    assert result["evidence"]["verdict"]["vmcore"]["ok"]
    assert result["evidence"]["load"]["image_facts"]["signatures"] == [LAB_SIGNER]


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
