"""The dump end to end: --save-vmcore read back on the host, and a kernel image by path."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import assert_dump_verified, labctl

pytestmark = pytest.mark.e2e


def test_saved_vmcore_opens_on_the_host_with_the_panic_in_it(tmp_path, no_leaks):
    """makedumpfile -c -d 23 in the capture kernel, streamed out, rebuilt on the host; the
    host's makedumpfile --dump-dmesg reads the crashed kernel's log out of it."""
    run = labctl("run", "crash-intact", "--kernel", "tiny-6.12-serial", "--save-vmcore", timeout=1200)
    assert run.returncode == 0, run.stdout + run.stderr
    result = run.results["crash-intact"]
    assert_dump_verified(result)
    saved = result["evidence"]["verdict"]["saved_vmcore"]
    assert saved["problems"] == [] and saved["rc"] == 0 and saved["file"] == "vmcore"
    assert saved["channel"] == "memory"  # through guest RAM, not the serial line
    vmcore = result["_dir"] / "vmcore"
    assert vmcore.stat().st_size == saved["size"] > 0 and not (result["_dir"] / "vmcore.flat").exists()
    assert vmcore.read_bytes()[:8] == b"KDUMP   "  # kdump-compressed, as makedumpfile -c writes
    assert "makedumpfile Completed." in saved["makedumpfile"]
    dmesg = tmp_path / "dmesg.txt"
    proc = subprocess.run([shutil.which("makedumpfile"), "--dump-dmesg", str(vmcore), str(dmesg)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = dmesg.read_text()
    for line in result["evidence"]["verdict"]["dump"]["log"]["console_lines"]:
        assert line in log
    assert "Kernel panic - not syncing: sysrq triggered crash" in log
    # as users open it: drgn with the recipe build's vmlinux (symbols, no DWARF) and kallsyms
    opened = labctl("dump", str(result["_dir"]))
    assert opened.returncode == 0, opened.stdout + opened.stderr
    crashed = result["evidence"]["verdict"]["dump"]["cpus"]["by_cpu"]["0"]
    assert f"crashed task: pid {crashed['pid']} on CPU 0" in opened.stdout, opened.stdout
    # tiny-6.12 has no frame pointers and no ORC (UNWINDER_GUESS): drgn's walk stops in the
    # crash path, and the stack scan the kernel itself would print goes on: the write to
    # /proc/sysrq-trigger and the panic (its build tail-calls panic from sysrq_handle_crash,
    # so that function leaves no return address; Debian's ORC builds show it, test_dump_open)
    backtrace = opened.stdout.split("backtrace (", 1)[1]
    assert "UNWINDER_GUESS" in backtrace and "? write_sysrq_trigger+" in backtrace, opened.stdout
    assert "? __handle_sysrq+" in backtrace and "panic+" in backtrace, opened.stdout
    assert "panic: Kernel panic - not syncing: sysrq triggered crash (" in opened.stdout


def test_a_bare_image_by_path_learns_its_options_from_the_running_kernel(tmp_path, no_leaks):
    """Debian 6.12's vmlinuz alone in a directory: no config file beside it, so
    CONFIG_CRASH_HOTPLUG comes from the running kernel, and the verdicts are the catalogue's."""
    listed = labctl("kernel", "fetch", "debian-6.12")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    image = next(p for p in listed.stdout.split() if "/vmlinuz-" in p)
    bare = tmp_path / "vmlinuz"
    shutil.copy(image, bare)
    run = labctl("run", "corrupt-elfcorehdr", "corrupt-elfcorehdr-pt-load", "lockdown-kexec-load",
                 "--kernel", str(bare))
    assert run.returncode == 0, run.stdout + run.stderr
    intact, damaged = run.results["corrupt-elfcorehdr"], run.results["corrupt-elfcorehdr-pt-load"]
    assert (intact["expected"], intact["outcome"]) == ("capture-booted", "capture-booted")
    assert (damaged["expected"], damaged["outcome"]) == ("dump-mismatch", "dump-mismatch")
    for result in (intact, damaged):
        fact = result["evidence"]["kernel_facts"]["CONFIG_CRASH_HOTPLUG"]
        assert fact["value"] == "y" and fact["source"].startswith(
            "running kernel: /sys/kernel/crash_elfcorehdr_size exists")
        assert "config_file" not in fact and result["kernel"]["bzimage"] == str(bare)
    locked = run.results["lockdown-kexec-load"]  # CONFIG_SECURITY_LOCKDOWN_LSM from securityfs
    assert (locked["expected"], locked["outcome"], locked["expected_errno"]) == (
        "load-rejected", "load-rejected", "EPERM")
    assert locked["evidence"]["kernel_facts"]["CONFIG_SECURITY_LOCKDOWN_LSM"] == {
        "value": "y", "source": "running kernel: /sys/kernel/security/lockdown exists "
                                "(security/lockdown/lockdown.c)"}
