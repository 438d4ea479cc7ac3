"""kexec reboot and mixed kernel versions: the scenario keys, the verdict rules on recorded
runs (debian-6.12, debian-6.1, tiny-6.12-serial's instrumented purgatory), and the host's
search for a reboot load's pages in a real RAM file."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from recorded import DATA, control_messages, registers, result

from labctl.config.schema import LoadStep, MachineConfig, find_scenario, load_lab, load_scenario
from labctl.errors import ConfigError
from labctl.evidence.identity import TOKEN_PARAM, token_in, with_token
from labctl.evidence.oops import OOPS_START, parse_oops
from labctl.evidence.reboot import CONSOLE_CMDLINE, loaded_kernel_problem, reboot_problem, rebooted_evidence
from labctl.evidence.segments import parse_segment_table
from labctl.evidence.verdict import ParkWatch, judge, parse_registers
from labctl.guest.assets import modules_layer_bytes
from labctl.guest.cpio import regular_files
from labctl.guest.memory import GuestMemory
from labctl.kernel.providers import resolve_kernel
from labctl.pair import snapshot
from labctl.pair.reboot import loaded_kernel, page_copies, reboot_cmdline, segment_bytes
from labctl.pair.steps import Loaded
from labctl.result import Outcome

ROOT = Path(__file__).resolve().parents[2]
REBOOT_DIR, MIXED_DIR = ROOT / "scenarios" / "kexec-reboot", ROOT / "scenarios" / "mixed"
KERNELS = ("debian-6.12", "debian-6.1")
SERIAL = "recipes/tiny-6.12-serial"  # its purgatory reports the digest on COM1


# ------------------------------------------------------------ the scenario keys

def test_the_reboot_and_mixed_scenarios_load_and_name_catalogue_kernels():
    lab = load_lab(ROOT / "lab.yaml")
    assert find_scenario("kexec-reboot-intact", lab.scenarios_dir) == REBOOT_DIR / "kexec-reboot-intact.yaml"
    assert not list(lab.scenarios_dir.glob("kexec-reboot*.yaml"))  # not in the all-kernel matrix
    reboots = [load_scenario(p) for p in sorted(REBOOT_DIR.glob("*.yaml"))]
    mixed = [load_scenario(p) for p in sorted(MIXED_DIR.glob("*.yaml"))]
    assert len(reboots) == 4 and len(mixed) == 8
    assert {(s.load.method, s.corrupt is not None) for s in reboots} == {
        (m, c) for m in ("kexec_file_load", "kexec_load") for c in (True, False)}
    for scenario in reboots:
        assert (scenario.trigger, scenario.load.crash) == ("kexec-reboot", False)
        assert scenario.expect.outcome == ("purgatory-refused" if scenario.corrupt else "rebooted")
    for scenario in mixed:
        assert scenario.load.kernel_from in lab.kernels
        assert scenario.load.crash == (scenario.trigger == "sysrq")


@pytest.mark.parametrize(("text", "key", "line", "words"), [
    ("expect: rebooted\ntrigger: kexec-reboot\n", "load.crash", 1, "set load.crash: false"),
    ("expect: rebooted\nload:\n  crash: false\n", "load.crash", 3, "set trigger: kexec-reboot"),
    ("expect: capture-booted\nload:\n  kernel: garbage\n  kernel_from: debian-6.1\n",
     "load.kernel_from", 4, "drop one of them"),
    ("expect: rebooted\ntrigger: kexec-reboot\nload:\n  crash: false\n  unload: true\n",
     "load.unload", 5, "a kexec reboot has none"),
    ("expect: purgatory-refused\ntrigger: kexec-reboot\nload: {crash: false}\n"
     "corrupt:\n  segment: purgatory\n", "corrupt.segment", 5, "kernel and initrd"),
    ("expect: rebooted\ntrigger: kexec-reboot\nload: {crash: false}\nhotplug: {cpus: 1}\n",
     "hotplug", 4, "writes none"),
])
def test_a_meaningless_reboot_scenario_is_refused_at_its_line(tmp_path, text, key, line, words):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert str(err.value).startswith(f"{path}:{line}: key '{key}': "), str(err.value)
    assert words in str(err.value) and err.value.exit_code == 2


def test_a_reboot_scenario_loads_on_its_own_run_from_a_booted_snapshot():
    scenario = load_scenario(REBOOT_DIR / "kexec-reboot-corrupt.yaml")
    assert snapshot.fresh_reason(scenario) is None
    assert "token" in snapshot.load_reason(scenario)
    assert snapshot.load_reason(load_scenario(MIXED_DIR / "mixed-crash-from-debian-6.1.yaml")) is None


def test_the_reboot_command_line_is_a_normal_boot_carrying_the_token():
    line = with_token(reboot_cmdline(MachineConfig(), LoadStep(cmdline="quiet"), ["console=ttyS0,115200"]),
                      "0123456789abcdef")  # Session.load adds the run's token to every load
    assert line.startswith("console=ttyS0,115200 ") and line.endswith(f" quiet {TOKEN_PARAM}=0123456789abcdef")
    assert "crashkernel" not in line and "elfcorehdr" not in line and "panic=0" in line
    assert token_in(line) == "0123456789abcdef" and token_in("console=ttyS0") is None


# ------------------------------------------------------------ recorded reboots

def new_kernel(kernel: str, scenario: str = "kexec-reboot-intact") -> tuple[dict, list[str], dict]:
    """The last hello (the new kernel's), the console's command lines after the reboot,
    and the recorded result."""
    hello = [m for m in control_messages(kernel, scenario) if m["type"] == "hello"][-1]
    console = (DATA / kernel / scenario / "serial.log").read_text()
    after = console.split("kexec_core: Starting new kernel")[-1]  # the lab reads the console from the reboot on
    return hello, CONSOLE_CMDLINE.findall(after), result(kernel, scenario)


@pytest.mark.parametrize("kernel", KERNELS)
def test_recorded_kexec_reboot_carries_the_runs_token_twice(kernel):
    hello, lines, recorded = new_kernel(kernel)
    token, release = recorded["evidence"]["reboot"]["token"], recorded["kernel"]["release"]
    evidence = rebooted_evidence(hello, lines, token, release)
    assert evidence == recorded["evidence"]["verdict"]
    assert reboot_problem(evidence) is None
    assert judge("rebooted", "rebooted", evidence) == (True, "rebooted as expected")
    assert judge("purgatory-refused", "rebooted", evidence)[0] is False


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_reboot_without_the_token_or_into_another_release_fails(kernel):
    hello, lines, recorded = new_kernel(kernel)
    token, release = recorded["evidence"]["reboot"]["token"], recorded["kernel"]["release"]
    primary = [m for m in control_messages(kernel, "kexec-reboot-intact") if m["type"] == "hello"][0]
    cases = {
        "another run's token": rebooted_evidence(hello, lines, "0123456789abcdef", release),
        "the old kernel's hello": rebooted_evidence(primary, lines, token, release),
        "no console line": rebooted_evidence(hello, [], token, release),
        "another release": rebooted_evidence(hello, lines, token, "6.0.0-other"),
    }
    for why, evidence in cases.items():
        passed, reason = judge("rebooted", "rebooted", evidence)
        assert not passed and "the evidence disagrees" in reason, why
    assert "no `Kernel command line:`" in reboot_problem(cases["no console line"])
    assert "6.0.0-other" in reboot_problem(cases["another release"])


def reboot_table(kernel: str, scenario: str):
    """The segment table of a recorded reboot load (either method)."""
    loaded = next(m for m in control_messages(kernel, scenario) if m["type"] in ("loaded", "kexec-tool"))
    return parse_segment_table(loaded.get("output", []) + loaded["log"])


@pytest.mark.parametrize(("kernel", "scenario"), [("debian-6.12", "kexec-reboot-corrupt"),
                                                  ("debian-6.12", "kexec-reboot-corrupt-kexec-load"),
                                                  ("debian-6.1", "kexec-reboot-corrupt")])
def test_recorded_corrupted_reboot_parks_in_purgatory_with_the_bytes_at_their_destination(kernel, scenario):
    recorded = result(kernel, scenario)
    parked, corruption = recorded["evidence"]["verdict"]["parked"], recorded["evidence"]["corruption"]
    table = reboot_table(kernel, scenario)
    watch = ParkWatch(table)
    rips = parse_registers(registers(kernel, scenario))
    watch.add(rips)
    watch.add(rips)
    code = bytes.fromhex(parked["code"])
    found = watch.parked(lambda _: code)
    assert found is not None and found["rip"] == parked["rip"] and code.startswith(bytes.fromhex("ebfe"))
    assert table.by_role("purgatory").contains(int(parked["rip"], 16))
    # a reboot load is not in the crashkernel region: purgatory's destination is ordinary RAM
    crashkernel = recorded["evidence"]["primary"]["crashkernel"]
    assert not crashkernel[0] <= int(parked["rip"], 16) <= crashkernel[1]
    kernel_segment = table.by_role("kernel")
    assert corruption["segment"]["role"] == "kernel" and len(corruption["copies"]) >= 1
    assert all(w["verified"] and w["written"] == corruption["written"] for w in corruption["writes"])
    assert int(corruption["destination"], 16) == kernel_segment.mem + int(corruption["offset"], 16)
    assert corruption["reached_destination"] and corruption["at_destination"] == corruption["written"]
    assert judge("purgatory-refused", "purgatory-refused", recorded["evidence"]["verdict"])[0]


def test_an_instrumented_purgatory_agrees_on_the_reboot_path():
    """tiny-6.12-serial's purgatory says on COM1 what its digest check found."""
    refused, booted = result(SERIAL, "kexec-reboot-corrupt"), result(SERIAL, "kexec-reboot-intact")
    said = refused["evidence"]["verdict"]["purgatory_console"]
    assert (said["digest"], said["boots_next_kernel"]) == ("mismatch", False)
    assert booted["evidence"]["verdict"]["purgatory_console"]["digest"] == "ok"
    assert judge("rebooted", "rebooted", booted["evidence"]["verdict"])[0]
    contradicted = {**booted["evidence"]["verdict"], "purgatory_console": said}
    assert "purgatory said on COM1" in judge("rebooted", "rebooted", contradicted)[1]


# ------------------------------------------------------------ recorded mixed versions

@pytest.mark.parametrize(("kernel", "scenario"), [("debian-6.12", "mixed-crash-from-debian-6.1"),
                                                  ("debian-6.1", "mixed-crash-from-debian-6.12"),
                                                  (SERIAL, "mixed-crash-from-debian-6.12")])
def test_recorded_mixed_crash_dump_is_written_by_one_version_and_read_by_the_other(kernel, scenario):
    recorded = result(kernel, scenario)
    verdict = recorded["evidence"]["verdict"]
    assert verdict["vmcore"]["osrelease"] == recorded["kernel"]["release"]  # the crashed kernel's
    assert verdict["capture_release"] == verdict["loaded_kernel"]["release"] != recorded["kernel"]["release"]
    assert verdict["dump"]["ok"] and loaded_kernel_problem(Outcome.CAPTURE_BOOTED, verdict) is None
    assert judge("capture-booted", "capture-booted", verdict)[0]
    other = {**verdict, "loaded_kernel": {**verdict["loaded_kernel"], "release": recorded["kernel"]["release"]}}
    passed, reason = judge("capture-booted", "capture-booted", other)
    assert not passed and "but the lab loaded" in reason


def test_recorded_mixed_reboot_boots_the_other_release():
    recorded = result(SERIAL, "mixed-reboot-from-debian-6.12")
    verdict = recorded["evidence"]["verdict"]
    assert verdict["release"] == recorded["evidence"]["load"]["kernel_from"]["release"] != recorded["kernel"]["release"]
    assert reboot_problem(verdict) is None and recorded["passed"]


# ------------------------------------------------------------ the host side

def test_page_copies_finds_every_page_aligned_copy_in_a_ram_file(tmp_path):
    page = bytes(range(256)) * 16
    ram = bytearray(64 * 1024)
    for at in (0x3000, 0x9000):
        ram[at:at + 4096] = page
    ram[0x5800:0x5800 + 4096] = page  # not page-aligned: no kexec source page
    path = tmp_path / "ram"
    path.write_bytes(bytes(ram))
    memory = GuestMemory(path)
    try:
        assert page_copies(memory, page) == [0x3000, 0x9000]
        assert page_copies(memory, b"\x55" * 4096) == []
    finally:
        memory.close()


def test_segment_bytes_are_the_bzimage_past_its_setup_or_the_initrd():
    image = bytearray(8192)
    image[0x1F1], image[0x202:0x206] = 3, b"HdrS"
    assert segment_bytes("kernel", bytes(image), b"") == bytes(image[(3 + 1) * 512:])
    assert segment_bytes("initrd", bytes(image), b"initramfs") == b"initramfs"
    with pytest.raises(ConfigError, match="x86 bzImage only"):
        segment_bytes("kernel", b"\0" * 8192, b"")


def test_two_kernels_modules_go_under_their_releases(tmp_path):
    ko = tmp_path / "virtio.ko"
    ko.write_bytes(b"\x7fELF module")
    archive = modules_layer_bytes((("6.1.0/01-virtio.ko", ko), ("6.12.0/01-virtio.ko", ko)))
    assert set(regular_files(archive)) == {"lib/modules/6.1.0/01-virtio.ko", "lib/modules/6.12.0/01-virtio.ko"}
    assert b"lib/modules/6.1.0\0" in archive  # the directory itself, before its file
    assert '/lib/modules/"$(uname -r)"/*.ko' in (ROOT / "guests" / "init").read_text()


def test_kernel_from_resolves_through_the_catalogue_and_keeps_to_one_architecture(tmp_path):
    (tmp_path / "bzImage").write_bytes(b"\0" * 4096)
    arm = bytearray(4096)
    arm[0x38:0x3C] = b"ARM\x64"
    (tmp_path / "Image").write_bytes(bytes(arm))
    (tmp_path / "lab.yaml").write_text(json.dumps({
        "default_kernel": "x86", "kernels": {
            "x86": {"path": "bzImage"}, "x86-b": {"path": "bzImage"},
            "arm": {"path": "Image", "arch": "arm64"}}}))
    lab = load_lab(tmp_path / "lab.yaml")
    run = resolve_kernel(lab, "x86")
    reboot = load_scenario(REBOOT_DIR / "kexec-reboot-intact.yaml")
    assert loaded_kernel(lab, run, reboot) is run
    assert loaded_kernel(lab, run, replace(reboot, load=LoadStep(kernel_from="x86-b"))).name == "x86-b"
    for name, words in (("nope", "not in the catalogue"), ("arm", "same architecture")):
        with pytest.raises(ConfigError, match=words) as err:
            loaded_kernel(lab, run, replace(reboot, load=LoadStep(kernel_from=name)))
        assert err.value.key == ("load", "kernel_from")
    # a reboot corruption of the kernel segment needs a bzImage: said before any boot
    corrupt = load_scenario(REBOOT_DIR / "kexec-reboot-corrupt.yaml")
    with pytest.raises(ConfigError, match="x86 bzImage only") as err:
        loaded_kernel(lab, run, corrupt)
    assert err.value.key == ("corrupt", "segment")


# ------------------------------------------------------------ a kernel failing inside the load

ARM64 = "tiny-6.12-arm64"  # oopses in machine_kexec_post_load() on any reboot (non-crash) load


def tool_reply(kernel: str) -> dict:
    """kexec-tools' reply to the recorded `kexec -l` of kexec-reboot-intact-kexec-load."""
    return next(m for m in control_messages(kernel, "kexec-reboot-intact-kexec-load") if m["type"] == "kexec-tool")


def test_an_oops_inside_kexec_load_is_in_the_load_evidence():
    reply = tool_reply(ARM64)
    loaded = Loaded(message=reply, table=parse_segment_table(reply["output"] + reply["log"]))
    assert reply["rc"] == 139 and loaded.rejected  # kexec-tools was killed with the oops
    oops = loaded.evidence()["kernel_oops"]
    assert oops[0].startswith("Unable to handle kernel paging request") and any("Oops: " in o for o in oops)
    assert result(ARM64, "kexec-reboot-intact-kexec-load")["evidence"]["load"]["kernel_oops"] == oops
    clean = tool_reply("debian-6.12")
    assert "kernel_oops" not in Loaded(message=clean, table=parse_segment_table(clean["log"])).evidence()


def test_an_oops_inside_kexec_file_load_is_named_from_the_console():
    """The helper dies in the syscall and never answers: the console's line is the evidence."""
    serial = (DATA / ARM64 / "kexec-reboot-intact" / "serial.log").read_text()
    lines = [line.split("] ", 1)[-1] for line in serial.splitlines() if OOPS_START.search(line)]
    assert lines and lines[0].startswith("Unable to handle kernel paging request at virtual address")
    recorded = result(ARM64, "kexec-reboot-intact")
    assert recorded["outcome"] == "infra-error" and lines[0].strip() in recorded["reason"]
    assert recorded["timings"]["total"] < 60  # named at once, not after the load timeout
    # read to the report's end, and named from it: the helper's task, the faulting function
    report = parse_oops([line.split("] ", 1)[-1] for line in serial.splitlines()])
    assert report.complete and report.task == "kexec-lab-helpe" and report.in_kexec() is True
    assert report.frames[:3] == ["trans_pgd_create_copy", "machine_kexec_post_load", "__arm64_sys_kexec_file_load"]
    assert recorded["reason"].startswith("the running kernel oopsed inside kexec_file_load, " + report.where())
    clean = (DATA / "debian-6.12" / "kexec-reboot-intact" / "serial.log").read_text()
    assert not any(OOPS_START.search(line) for line in clean.splitlines())
