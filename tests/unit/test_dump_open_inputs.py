"""`labctl dump`: where its inputs come from (recorded artifacts), and where its debug info
comes from, without downloading anything."""

from __future__ import annotations

from recorded import DATA, message

from labctl.pair import dump_open

DEBIAN = {"name": "debian-6.12", "release": "6.12.117+deb12-cloud-amd64",
          "package": "linux-image-6.12.117+deb12-cloud-amd64", "version": "6.12.117-1~deb12u1"}


def test_the_prstatus_notes_come_from_the_capture_hello_in_control_log():
    head = dump_open.capture_head(DATA / "debian-6.12" / "crash-intact-dump-check")
    assert head == bytes.fromhex(message("debian-6.12", "crash-intact-dump-check", "hello",
                                         role="capture")["vmcore_head"])
    assert dump_open.capture_head(DATA / "debian-6.12") is None  # no control.log there


def test_debug_info_is_the_recipe_vmlinux_or_debians_dbg_only_when_cached_or_asked(tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    (build / "vmlinux").write_bytes(b"\x7fELF")
    recipe = {"name": "tiny", "release": "6.12.0", "recipe": {"directory": str(build)}}
    assert dump_open.debug_vmlinux(recipe, tmp_path, fetch=False) == (build / "vmlinux", "the recipe build's vmlinux")
    path, why = dump_open.debug_vmlinux(DEBIAN, tmp_path, fetch=False)
    assert path is None and why.startswith("Debian's linux-image-6.12.117+deb12-cloud-amd64-dbg is not "
                                           "cached (--fetch-debug-info downloads it")
    cached = tmp_path / "debug" / f"{DEBIAN['package']}-dbg_{DEBIAN['version']}" / f"vmlinux-{DEBIAN['release']}"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\x7fELF")
    assert dump_open.debug_vmlinux(DEBIAN, tmp_path, fetch=False)[0] == cached
    assert dump_open.debug_vmlinux({"name": "by-path", "release": "x"}, tmp_path, fetch=True) == (
        None, "no debug info known for this kernel")


def test_the_printed_summary_names_every_part():
    opened = dump_open.Opened(DATA / "vmcore", "6.12.117", "none", "Kernel panic - not syncing: x",
                              "the dump's log", "pid 7 (kexec-lab-helpe) on CPU 1",
                              ["#0 at 0x1 (__crash_kexec+0x11c/0x130)"], "drgn without CFI",
                              {"open": 0.2})
    assert opened.text().splitlines()[2:6] == [
        "panic: Kernel panic - not syncing: x (the dump's log)",
        "crashed task: pid 7 (kexec-lab-helpe) on CPU 1", "backtrace (drgn without CFI):",
        "  #0 at 0x1 (__crash_kexec+0x11c/0x130)"]


def guess_program(words: dict[int, int]):
    """A drgn program over one 16 KiB stack (offset -> word) and two kernel functions."""
    import drgn
    prog = drgn.Program(drgn.host_platform)
    stack = bytearray(dump_open.THREAD_SIZE)
    for offset, word in words.items():
        stack[offset:offset + 8] = word.to_bytes(8, "little")
    prog.add_memory_segment(STACK, len(stack),
                            lambda address, count, offset, physical: bytes(stack[offset:offset + count]))
    functions = [drgn.Symbol(name, address, 0x100, drgn.SymbolBinding.GLOBAL, drgn.SymbolKind.FUNC)
                 for name, address in (("vpanic", TEXT), ("write_sysrq_trigger", TEXT + 0x1000))]

    def find(prog, name, address, one):
        return [s for s in functions if (address is None or s.address <= address < s.address + s.size)
                and (name is None or s.name == name)]
    prog.register_symbol_finder("test", find, enable_index=0)
    return prog


STACK, TEXT = 0xFFFF_C900_0000_0000, 0xFFFF_FFFF_8100_0000


def test_a_stack_without_frame_pointers_is_scanned_as_unwinder_guess_does():
    """Return addresses inside functions, from sp up to the stack's top, marked "?"; a word
    at a function's first byte is a pointer to it (an ops table), not a return address; a
    word below sp belongs to no live frame."""
    prog = guess_program({0x3E00: TEXT + 0xCE, 0x3E08: TEXT + 0x1000, 0x3F00: TEXT + 0x103F,
                          0x100: TEXT + 0x10})
    assert dump_open.guess_frames(prog, STACK + 0x3D00) == [
        f"? vpanic+0xce/0x100 (at {STACK + 0x3E00:#x})",
        f"? write_sysrq_trigger+0x3f/0x100 (at {STACK + 0x3F00:#x})"]
