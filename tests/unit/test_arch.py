"""Per-architecture data on recorded register dumps and real guest RAM layouts.

tests/data/arch/registers-*-self.txt are `info registers -a` from QEMU 7.2 (aarch64 and
riscv64 virt, TCG, 2 vCPUs) whose CPU 0 ran a four-byte self-branch QEMU loaded as the
kernel: aarch64's boot stub enters it at RAM base + 0x80000, riscv64's OpenSBI at
RAM base + 0x200000; CPU 1 was still in the boot ROM / OpenSBI's wait loop.
"""

from pathlib import Path

import pytest
from recorded import message, registers, result

from labctl.config.arch import ARM64, HOST, RISCV64, X86_64, get_arch
from labctl.config.schema import MachineConfig
from labctl.errors import ConfigError
from labctl.evidence.segments import Segment, SegmentTable, parse_segment_table
from labctl.evidence.verdict import ParkWatch, parse_registers
from labctl.guest.machine import MachineSpec, qemu_argv
from labctl.guest.memory import GuestMemory
from labctl.pair.runner import capture_cmdline, primary_cmdline

DATA = Path(__file__).parent.parent / "data" / "arch"
SOCKS = (Path("/run/x/ram"), Path("/run/x/console.sock"), Path("/run/x/control.sock"),
         Path("/run/x/qmp.sock"))


def dump(name: str) -> str:
    return (DATA / name).read_text()


def test_recorded_arm64_dump_gives_each_cpus_pc():
    pcs = parse_registers(dump("registers-arm64-b-self.txt"), ARM64)
    assert pcs == {0: 0x40080000, 1: 0x0}
    assert parse_registers(dump("registers-arm64-b-self.txt")) == {}  # no RIP= in it


def test_recorded_riscv64_dump_gives_each_harts_pc():
    # the riscv dump has a line "pc" per CPU and many other registers ending in "pc"
    # (mepc, sepc): only the program counter counts
    assert parse_registers(dump("registers-riscv64-j-self.txt"), RISCV64) == {0: 0x80200000,
                                                                               1: 0x80009B04}


@pytest.mark.parametrize("arch, code, parked", [
    (ARM64, "00000014", True),        # b .
    (ARM64, "ffffff17", False),       # b .-4: a loop, not a self-branch
    (ARM64, "7f2003d5", False),       # wfi alone: the PC moves on after an interrupt
    (RISCV64, "6f000000", True),      # j . (jal x0, 0)
    (RISCV64, "01a0", True),          # c.j . (compressed, as purgatory is built)
    (RISCV64, "6ff0dfff", False),     # j .-4
    (X86_64, "ebfe", True),
    (X86_64, "00000014", False),      # arm64's encoding means nothing on x86
])
def test_self_branch_encodings(arch, code, parked):
    assert arch.is_self_branch(bytes.fromhex(code)) is parked


@pytest.mark.parametrize("arch, name", [(ARM64, "registers-arm64-b-self.txt"),
                                        (RISCV64, "registers-riscv64-j-self.txt")])
def test_parked_vcpu_found_through_the_ram_base(arch, name, tmp_path):
    """The recorded PC, read through the RAM file at (PC - RAM base), is the self-branch
    that was there: the whole chain the verdict rests on, per architecture."""
    ram = tmp_path / "ram"
    ram.write_bytes(bytes(16 << 20))
    pc = parse_registers(dump(name), arch)[0]
    memory = GuestMemory(ram, arch.ram_base)
    try:
        memory.write(pc, arch.self_branches[0])
        assert ram.read_bytes()[pc - arch.ram_base:][:4] == arch.self_branches[0]
        purgatory = Segment(index=1, mem=pc & ~0xFFF, memsz=0x4000, bufsz=0x3000, role="purgatory")
        watch = ParkWatch(SegmentTable((purgatory,)), arch)
        for _ in range(2):
            watch.add(parse_registers(dump(name), arch))
        parked = watch.parked(lambda address: memory.read(address, 4))
        assert parked["cpu"] == 0 and int(parked["rip"], 16) == pc
        assert parked["purgatory_offset"] == hex(pc & 0xFFF)
    finally:
        memory.close()


def test_guest_memory_maps_addresses_through_the_base(tmp_path):
    ram = tmp_path / "ram"
    ram.write_bytes(bytes(0x10000))
    memory = GuestMemory(ram, 0x80000000)
    try:
        memory.write(0x80001000, b"kexec")
        assert memory.offset(0x80001000) == 0x1000 and memory.end == 0x80010000
        assert ram.read_bytes()[0x1000:0x1005] == b"kexec"
        assert memory.find(b"kexec", 0x80000000, memory.end) == 0x80001000
        assert [(s, e) for s, e in memory.written_ranges()][0][0] >= 0x80000000
        with pytest.raises(ValueError, match="outside RAM"):
            memory.read(0x1000, 4)  # below RAM on riscv64 virt: not offset 0x1000
    finally:
        memory.close()


def test_virt_command_lines_use_a_virtio_console_for_control():
    for arch, binary, machine in ((ARM64, "qemu-system-aarch64", "virt"),
                                  (RISCV64, "qemu-system-riscv64", "virt")):
        spec = MachineSpec(kernel=Path("/k/Image"), initrd=Path("/k/i"), cmdline="c", arch=arch.name)
        argv = qemu_argv(spec, *SOCKS)
        assert argv[0] == binary and any(a.startswith(machine) and a.endswith(",memory-backend=ram") for a in argv)
        assert argv.count("-serial") == 1  # one UART: the console
        assert ["-device", "virtconsole,chardev=control"] == argv[argv.index("virtconsole,chardev=control") - 1:][:2]
    assert ["-bios", "default"] == qemu_argv(MachineSpec(Path("k"), Path("i"), "c", arch="riscv64"),
                                             *SOCKS)[5:7]


def test_kernel_command_lines_name_console_and_control_port():
    m = MachineConfig()
    assert primary_cmdline(m).startswith("console=ttyS0,115200 crashkernel=256M")
    assert "labctl_control" not in primary_cmdline(m)  # x86_64: ttyS1, init's default
    arm = primary_cmdline(m, arch=ARM64)
    assert arm.startswith("console=ttyAMA0,115200 labctl_control=/dev/hvc0 crashkernel=256M")
    assert capture_cmdline(m, arch=RISCV64).startswith(
        "console=ttyS0,115200 riscv_isa_fallback labctl_control=/dev/hvc0 ")


def test_unknown_architecture_is_a_config_error():
    assert get_arch(None) is HOST
    with pytest.raises(ConfigError, match="unknown architecture 'sparc'"):
        get_arch("sparc")


# ------------------------------------------------------------ recorded arm64 runs
# tests/data/tiny-6.12-arm64/: real runs of the tiny-6.12-arm64 recipe under TCG.

def arm64_load(scenario: str) -> dict:
    kind = "kexec-tool" if scenario.endswith("kexec-load") else "loaded"
    return message("tiny-6.12-arm64", scenario, kind)


def test_arm64_kexec_file_load_segments_have_roles_and_no_purgatory():
    """arch/arm64/kernel/kexec_image.c and machine_kexec_file.c under KEXEC_FILE_DEBUG:
    kernel, elf core headers, initrd, device tree; no purgatory segment at all."""
    table = parse_segment_table(arm64_load("crash-corrupt")["log"])
    assert [s.role for s in table.segments] == ["kernel", "elfcorehdr", "initrd", "dtb"]
    assert table.by_role("purgatory") is None
    assert table.entry == table.by_role("kernel").mem  # entered directly, no purgatory


def test_arm64_kexec_tools_segments_name_purgatory_by_the_entry():
    message_ = arm64_load("crash-intact-kexec-load")
    table = parse_segment_table(message_["output"] + message_["log"])
    assert [s.role for s in table.segments] == ["kernel", "initrd", "dtb", "purgatory", "elfcorehdr"]
    assert table.by_role("purgatory").contains(table.entry)


def replay_park(kernel: str, scenario: str, table, arch) -> tuple[dict[int, int], bytes]:
    """A recorded purgatory-refused run's registers, replayed through ParkWatch: the recorded
    PC is the parked one and the watch finds the same purgatory offset.  Returns the PCs and
    the recorded code bytes at the parked one."""
    parked = result(kernel, scenario)["evidence"]["verdict"]["parked"]
    pcs = parse_registers(registers(kernel, scenario), arch)
    assert pcs[parked["cpu"]] == int(parked["rip"], 16)
    watch = ParkWatch(table, arch)
    watch.add(pcs)
    watch.add(pcs)
    code = bytes.fromhex(parked["code"])
    assert watch.parked(lambda _: code)["purgatory_offset"] == parked["purgatory_offset"]
    return pcs, code


def test_arm64_recorded_parked_vcpu_is_in_kexec_tools_purgatory():
    table = parse_segment_table(arm64_load("crash-corrupt-kexec-load")["output"])
    pcs, code = replay_park("tiny-6.12-arm64", "crash-corrupt-kexec-load", table, ARM64)
    assert code.startswith(bytes.fromhex("00000014"))  # b .
    x86 = ParkWatch(table)  # the same bytes are no self-jump to x86 eyes
    x86.add(pcs)
    x86.add(pcs)
    assert x86.parked(lambda _: code) is None


def test_arm64_corrupted_kernel_was_entered_and_booted():
    """The truthful arm64 answer: nothing checked the digest, the corrupted Image booted."""
    recorded = result("tiny-6.12-arm64", "crash-corrupt")
    assert recorded["outcome"] == recorded["expected"] == "capture-booted" and recorded["passed"]
    corruption = recorded["evidence"]["corruption"]
    assert corruption["verified"] and corruption["still_corrupted"]
    assert corruption["at_verdict"] == corruption["written"] != corruption["before"]
    assert "no purgatory" in recorded["expectation_reason"]


# ------------------------------------------------------------ recorded riscv64 runs

def test_riscv64_kernel_segments_are_named_by_position():
    """kexec_elf.c logs nothing about the kernel's PT_LOAD segments: the unnamed segments
    before the first named one are the kernel; purgatory and the rest are logged."""
    log = message("tiny-6.12-riscv64", "crash-corrupt", "loaded")["log"]
    named = parse_segment_table(log, unlogged_kernel=True)
    assert [s.role for s in named.segments] == ["kernel", "kernel", "kernel", "elfcorehdr",
                                                 "purgatory", "initrd", "dtb"]
    assert [s.role for s in parse_segment_table(log).segments][:3] == [None, None, None]
    assert named.by_role("purgatory").contains(named.entry)


def test_riscv64_recorded_parked_hart_sits_on_a_compressed_self_jump():
    table = parse_segment_table(message("tiny-6.12-riscv64", "crash-corrupt", "loaded")["log"], True)
    _, code = replay_park("tiny-6.12-riscv64", "crash-corrupt", table, RISCV64)
    assert code[:2] == bytes.fromhex("01a0")
