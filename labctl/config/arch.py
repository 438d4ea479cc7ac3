"""What differs between guest architectures, as data (like kunit's qemu_configs).

One frozen record per architecture: the QEMU binary and machine, the console
and control ports, where guest RAM starts (guest physical address <-> offset of
the RAM backing file), how a parked vCPU looks (program counter register in
HMP `info registers`, self-branch encodings), how a recipe kernel is
cross-built and which image each loader takes.  Code elsewhere asks this
module; it never tests an architecture's name itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from labctl.errors import ConfigError


@dataclass(frozen=True)
class Arch:
    name: str  # the lab's name, also `uname -m`-like: x86_64 | arm64 | riscv64
    qemu_binary: str
    qemu_package: str  # the Debian package that ships qemu_binary
    machine: str  # QEMU -machine type (x86_64 takes lab.yaml's machine.type)
    cpu_tcg: str
    extra_qemu: tuple[str, ...]  # firmware and the like
    ram_base: int  # guest physical address of the first byte of the RAM file
    console: str  # the kernel console (console=...)
    control_device: str  # where the helper finds the control channel (/dev/...)
    virtio_control: bool  # control channel on virtio-console (hvc0), not a second UART
    make_arch: str  # ARCH= for kbuild
    cross_compile: str  # CROSS_COMPILE= for kbuild and the helper's compiler prefix
    cross_package: str  # Debian package of that compiler
    boot_target: str  # make target that builds the image QEMU boots
    outputs: tuple[tuple[str, str], ...]  # cached name -> path in the object tree
    boot_image: str  # cached name QEMU boots (-kernel)
    kexec_image: str  # cached name the capture kernel is loaded from (kexec_file_load's loader)
    debian_arch: str | None  # dpkg architecture of guest userspace (None: no Debian 12 port)
    pc_register: re.Pattern  # the program counter in `info registers`
    self_branches: tuple[bytes, ...]  # encodings of "branch to itself"
    # Does kexec_file_load's purgatory verify the segment digests?  Read from
    # linux-source-6.12: kexec_calculate_store_digests() (kernel/kexec_file.c) returns at
    # once without CONFIG_ARCH_SUPPORTS_KEXEC_PURGATORY, which arm64 does not select.
    file_purgatory_checks: bool
    # Does kexec-tools' purgatory (kexec_load) verify them?  kexec-tools 2.0.25:
    # purgatory/purgatory.c's verify_sha256_digest() is linked for x86_64 and arm64;
    # riscv has no purgatory in kexec-tools.
    tool_purgatory_checks: bool
    gdb_architecture: str
    pc_name: str  # what the dump calls the program counter
    elf_machine: int  # e_machine of the kernel's purgatory object (purgatory.py finds it in RAM)
    # kexec_file_load's loader logs no line for the kernel's own segments (riscv64's
    # kexec_elf.c): segments.parse_segment_table names them by position
    file_kernel_unlogged: bool = False
    # How much slower than the host's own architecture a guest runs under TCG: lab.yaml's
    # timeouts and the QMP answer deadline are stretched by it (backstops, not verdicts).
    # Measured here (2 cores, loaded): Debian 6.1 arm64 boots in 12-17 s against 4 s for
    # amd64, kexec-tools' arm64 purgatory hashes 27 MB in about 40 s, and QEMU's monitor
    # once went 12 s without answering while an arm64 capture kernel started.
    tcg_slowdown: float = 1.0
    # QEMU's model of the console UART blocks the vCPU (and the monitor) until each byte is
    # written: the console goes through labctl/guest/relay.py (PL011 on aarch64 virt)
    blocking_uart: bool = False
    # kernel parameters every guest of the architecture needs (primary and capture)
    extra_params: tuple[str, ...] = ()
    # load method -> the segment roles it loads (what `labctl coverage` corrupts)
    load_roles: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def methods(self) -> tuple[str, ...]:
        """The load methods this lab can drive on the architecture."""
        return tuple(method for method, _ in self.load_roles)

    def roles(self, method: str) -> tuple[str, ...]:
        return dict(self.load_roles).get(method, ())

    @property
    def kbuild(self) -> list[str]:
        """make variables for a cross build (none for the host's own architecture)."""
        return [f"ARCH={self.make_arch}", f"CROSS_COMPILE={self.cross_compile}"] if self.cross_compile else []

    @property
    def kernel_params(self) -> list[str]:
        """The console, and where init finds the control channel if not on ttyS1 (the
        kernel hands unknown name=value parameters to init's environment, except names
        starting with "kexec", which init/main.c's unknown_bootoption() drops as a
        bootloader's mark)."""
        params = [f"console={self.console},115200", *self.extra_params]
        if self.control_device != "/dev/ttyS1":
            params.append(f"labctl_control={self.control_device}")
        return params

    @property
    def gdb(self) -> str:
        """Debian's gdb knows only the host's architecture; gdb-multiarch knows them all."""
        return "gdb" if not self.cross_compile else "gdb-multiarch"

    @property
    def cc(self) -> str:
        return f"{self.cross_compile}gcc"

    def ram_offset(self, address: int) -> int:
        """Offset in the RAM backing file of a guest physical address."""
        return address - self.ram_base

    def guest_address(self, offset: int) -> int:
        """Guest physical address of an offset in the RAM backing file."""
        return offset + self.ram_base

    def parse_pcs(self, text: str) -> dict[int, int]:
        """CPU index -> program counter from HMP `info registers [-a]`."""
        pcs: dict[int, int] = {}
        headers = list(CPU_HEADER.finditer(text))
        if not headers:  # a single CPU's dump has no CPU# header
            m = self.pc_register.search(text)
            return {0: int(m[1], 16)} if m else {}
        for i, header in enumerate(headers):
            end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
            if m := self.pc_register.search(text, header.end(), end):
                pcs[int(header[1])] = int(m[1], 16)
        return pcs

    def is_self_branch(self, code: bytes) -> bool:
        return any(code.startswith(b) for b in self.self_branches)


CPU_HEADER = re.compile(r"^CPU#(\d+)", re.MULTILINE)

X86_64 = Arch(
    name="x86_64", qemu_binary="qemu-system-x86_64", qemu_package="qemu-system-x86",
    machine="pc", cpu_tcg="max", extra_qemu=(),
    ram_base=0,  # pc: below the PCI hole (<= 3 GiB), address X is offset X
    console="ttyS0", control_device="/dev/ttyS1", virtio_control=False,
    make_arch="x86", cross_compile="", cross_package="gcc", boot_target="bzImage",
    outputs=(("bzImage", "arch/x86/boot/bzImage"), ("purgatory.ro", "arch/x86/purgatory/purgatory.ro")),
    boot_image="bzImage", kexec_image="bzImage", debian_arch="amd64",
    pc_register=re.compile(r"\bRIP=([0-9a-fA-F]+)"),
    # jmp . short (EB FE) or near (E9 FB FF FF FF)
    self_branches=(bytes.fromhex("ebfe"), bytes.fromhex("e9fbffffff")),
    file_purgatory_checks=True, tool_purgatory_checks=True, gdb_architecture="i386:x86-64",
    pc_name="RIP", elf_machine=62,
    load_roles=(("kexec_file_load", ("kernel", "initrd", "boot_params", "elfcorehdr", "purgatory")),
                ("kexec_load", ("kernel", "initrd", "boot_params", "elfcorehdr", "purgatory",
                                "backup"))),
)

ARM64 = Arch(
    name="arm64", qemu_binary="qemu-system-aarch64", qemu_package="qemu-system-arm",
    # no /chosen/kaslr-seed (nor rng-seed): a kernel without RANDOMIZE_BASE leaves it in the device tree
    # and kexec-tools then refuses to load ("setup_2nd_dtb: kaslr-seed is not wiped to 0")
    machine="virt,dtb-randomness=off", cpu_tcg="max", extra_qemu=(),
    ram_base=0x4000_0000,  # hw/arm/virt.c: VIRT_MEM
    # virt has one PL011 (QEMU 7.2): the control channel is a virtio-console port (hvc0)
    console="ttyAMA0", control_device="/dev/hvc0", virtio_control=True,
    make_arch="arm64", cross_compile="aarch64-linux-gnu-", cross_package="gcc-aarch64-linux-gnu",
    boot_target="Image", outputs=(("Image", "arch/arm64/boot/Image"),),
    boot_image="Image", kexec_image="Image",  # kexec_image.c: the uncompressed Image only
    debian_arch="arm64",
    pc_register=re.compile(r"\bPC=([0-9a-fA-F]+)"),
    # b . (imm26 = 0); wfe/wfi loops are b back to them, recognised by the same jump
    self_branches=(bytes.fromhex("00000014"),),
    file_purgatory_checks=False, tool_purgatory_checks=True, gdb_architecture="aarch64",
    pc_name="PC", elf_machine=183,
    tcg_slowdown=3.0, blocking_uart=True,
    load_roles=(("kexec_file_load", ("kernel", "initrd", "dtb", "elfcorehdr")),
                ("kexec_load", ("kernel", "initrd", "dtb", "elfcorehdr", "purgatory"))),
)

RISCV64 = Arch(
    name="riscv64", qemu_binary="qemu-system-riscv64", qemu_package="qemu-system-misc",
    machine="virt", cpu_tcg="rv64", extra_qemu=("-bios", "default"),  # QEMU's own OpenSBI
    ram_base=0x8000_0000,  # hw/riscv/virt.c: VIRT_DRAM (OpenSBI keeps the first 2 MiB)
    console="ttyS0", control_device="/dev/hvc0", virtio_control=True,  # one NS16550A
    make_arch="riscv", cross_compile="riscv64-linux-gnu-", cross_package="gcc-riscv64-linux-gnu",
    boot_target="Image",
    outputs=(("Image", "arch/riscv/boot/Image"), ("purgatory.ro", "arch/riscv/purgatory/purgatory.ro")),
    # QEMU boots the flat Image; kexec_file_load in 6.12 has only the ELF loader (kexec_elf.c)
    boot_image="Image", kexec_image="vmlinux", debian_arch=None,
    pc_register=re.compile(r"^\s*pc\s+([0-9a-fA-F]+)", re.MULTILINE),
    # j . (jal x0, 0) and its compressed form c.j . (0xa001)
    self_branches=(bytes.fromhex("6f000000"), bytes.fromhex("01a0")),
    file_purgatory_checks=True, tool_purgatory_checks=False, gdb_architecture="riscv:rv64",
    pc_name="pc", elf_machine=243,
    file_kernel_unlogged=True,
    # QEMU 7.2 describes the harts with "riscv,isa" only; a kernel without
    # RISCV_ISA_FALLBACK (tinyconfig) then finds no F/D extension, leaves user FP off, and
    # glibc's first FP instruction is SIGILL for init (arch/riscv/kernel/cpufeature.c)
    extra_params=("riscv_isa_fallback",),
    tcg_slowdown=3.0,
    # no kexec-tools for riscv64 in Debian 12 (and its purgatory checks nothing there)
    load_roles=(("kexec_file_load", ("kernel", "initrd", "dtb", "elfcorehdr", "purgatory")),),
)

ARCHES = {a.name: a for a in (X86_64, ARM64, RISCV64)}
HOST = X86_64


def get_arch(name: str | None) -> Arch:
    if name is None:
        return HOST
    try:
        return ARCHES[name]
    except KeyError:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(ARCHES)}") from None
