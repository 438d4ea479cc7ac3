"""Evidence of a kexec reboot, and of which kernel a kexec entered (mixed versions).

A kexec reboot (reboot(LINUX_REBOOT_CMD_KEXEC) after a load without the crash flag)
enters the loaded kernel through the same purgatory and the same SHA-256 check as a
crash: kernel/kexec_file.c kexec_file_load() calls kexec_calculate_store_digests() for
both slots (kexec_image and kexec_crash_image), and arch/x86/purgatory/purgatory.c
purgatory() loops forever when verify_sha256_digest() fails.  A refusal is therefore
the same parked vCPU as after a crash (verdict.ParkWatch); a boot is the new kernel's
own word: its helper's hello carries /proc/cmdline, and its console prints
`Kernel command line:`, both of which must hold the token this run put on the loaded
kernel's command line (an old kernel or a stale log cannot have it): the same
`labctl_run=` token every load carries (identity.py), so that a reboot kernel and a
capture kernel are told apart from the primary the same way.
"""

from __future__ import annotations

import re

from labctl.evidence.identity import TOKEN_PARAM, token_in
from labctl.result import Outcome

CONSOLE_CMDLINE = re.compile(r"Kernel command line: [^\r\n]*\r?\n")  # whole lines


def rebooted_evidence(hello: dict, console_lines: list[str], token: str, release: str) -> dict:
    """What the new kernel said, next to what the lab loaded (its token and release)."""
    console_tokens = [token_in(line) for line in console_lines]
    return {"token": token, "expected_release": release,
            "release": hello.get("release"), "cmdline": hello.get("cmdline"),
            "helper_role": hello.get("role"),
            "hello_has_token": token_in(hello.get("cmdline")) == token,
            "console_cmdline": [line.strip()[:1000] for line in console_lines[-2:]],
            "console_has_token": token in console_tokens}


def reboot_problem(evidence: dict) -> str | None:
    """Why a `rebooted` outcome is not a sound boot of the loaded kernel, or None."""
    if not evidence.get("hello_has_token"):
        return (f"the kernel that said hello has no {TOKEN_PARAM}={evidence.get('token')} "
                f"on its command line ({evidence.get('cmdline')!r})")
    if not evidence.get("console_has_token"):
        return f"the console showed no `Kernel command line:` with {TOKEN_PARAM}={evidence.get('token')}"
    if evidence.get("release") != evidence.get("expected_release"):
        return (f"the new kernel is {evidence.get('release')!r}, but the lab loaded "
                f"{evidence.get('expected_release')!r}")
    if evidence.get("helper_role") != "primary":
        return f"the new kernel's helper calls itself {evidence.get('helper_role')!r} (a capture kernel?)"
    return None


def loaded_kernel_problem(outcome: str, evidence: dict) -> str | None:
    """With another catalogue kernel loaded (load.kernel_from): the kernel that booted
    must be that one, by its release."""
    loaded = evidence.get("loaded_kernel")
    if not loaded or outcome != Outcome.CAPTURE_BOOTED:
        return None
    if evidence.get("capture_release") != loaded.get("release"):
        return (f"the capture kernel is {evidence.get('capture_release')!r}, but the lab loaded "
                f"{loaded.get('name')} ({loaded.get('release')!r})")
    return None


def kexec_problem(outcome: str, evidence: dict) -> str | None:
    """The rules of this module for judge(): a reboot's two signals, the loaded kernel's release."""
    if outcome == Outcome.REBOOTED:
        return reboot_problem(evidence)
    return loaded_kernel_problem(outcome, evidence)
