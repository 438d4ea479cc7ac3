"""The lab prompt's parsing: every command, its defaults, and what a typo gets back."""

import pytest
from recorded import DATA, message, registers

from labctl.config.schema import Corruption
from labctl.console.prompt import (
    COMMANDS,
    MAX_PEEK,
    Command,
    UsageError,
    format_registers,
    format_segments,
    help_text,
    hexdump,
    parse,
)
from labctl.evidence.purgatory import locate
from labctl.evidence.segments import parse_segment_table


def test_blank_lines_are_nothing_to_run():
    assert parse("") is None and parse("   \t") is None


@pytest.mark.parametrize("name", ["help", "segments", "load", "regs", "verdict", "gdb",
                                  "continue", "console", "quit"])
def test_commands_without_arguments(name):
    assert parse(name) == Command(name, {})
    assert parse(f"  {name.upper()}  ") == Command(name, {})
    with pytest.raises(UsageError, match=rf"^{name}: takes no arguments .*usage: {name}\)$"):
        parse(f"{name} extra")


def test_corrupt_defaults_come_from_the_scenario_schema():
    assert parse("corrupt kernel") == Command("corrupt", {"corruption": Corruption("kernel")})
    assert parse("corrupt kernel").args["corruption"] == Corruption("kernel", "middle", 16, "flip")


def test_corrupt_takes_placements_numbers_and_patterns():
    assert parse("corrupt initrd tail").args["corruption"] == Corruption("initrd", "tail")
    assert parse("corrupt purgatory 0x100 4 zero").args["corruption"] == \
        Corruption("purgatory", 0x100, 4, "zero")
    assert parse("corrupt elfcorehdr 8 1 bit").args["corruption"] == Corruption("elfcorehdr", 8, 1, "bit")


@pytest.mark.parametrize("line, problem", [
    ("corrupt", "needs a segment role"),
    ("corrupt kernal", "unknown segment role 'kernal'; roles: elfcorehdr, purgatory"),
    ("corrupt kernel here", "OFFSET must be a number"),
    ("corrupt kernel -4", "OFFSET must be 0 or more"),
    ("corrupt kernel 0 0", "LENGTH must be between 1 and"),
    ("corrupt kernel 0 4 scramble", "unknown pattern 'scramble'; patterns: flip, zero"),
    ("corrupt kernel 0 4 flip more", "needs a segment role and at most"),
])
def test_corrupt_errors_say_what_is_accepted(line, problem):
    with pytest.raises(UsageError, match="usage: corrupt ROLE") as error:
        parse(line)
    assert str(error.value).startswith("corrupt: ") and problem in str(error.value)


def test_peek_reads_hex_or_decimal_and_is_bounded():
    assert parse("peek 0x3dffb160 16") == Command("peek", {"address": 0x3DFFB160, "length": 16})
    assert parse(f"peek 4096 {MAX_PEEK}").args == {"address": 4096, "length": MAX_PEEK}
    for line, problem in [("peek 0x1000", "needs an address and a length"),
                          (f"peek 0 {MAX_PEEK + 1}", f"between 1 and {MAX_PEEK}"),
                          ("peek zz 4", "ADDR must be a number")]:
        with pytest.raises(UsageError, match=problem):
            parse(line)


def test_panic_takes_a_known_trigger_or_none():
    assert parse("panic") == Command("panic", {"trigger": None})
    assert parse("panic sysrq") == Command("panic", {"trigger": "sysrq"})
    with pytest.raises(UsageError, match="unknown trigger 'oops'"):
        parse("panic oops")


def test_unknown_commands_and_unreadable_lines():
    with pytest.raises(UsageError, match=r"unknown command 'segmnets'; `help` lists"):
        parse("segmnets")
    with pytest.raises(UsageError, match="cannot read that line"):
        parse('peek "0x10 4')


def test_help_lists_every_command_and_the_escape_key():
    text = help_text()
    for spec in COMMANDS.values():
        assert spec.usage in text
    assert "Ctrl-]" in text


def test_hexdump_shows_address_hex_and_ascii():
    lines = hexdump(0x1000, b"kexec\x00\xeb\xfe" + bytes(range(0x41, 0x51))).splitlines()
    assert lines[0] == ("0x0000000000001000: 6b 65 78 65 63 00 eb fe 41 42 43 44 45 46 47 48"
                        "  |kexec...ABCDEFGH|")
    assert lines[1].startswith("0x0000000000001010: 49 4a 4b 4c 4d 4e 4f 50 ")
    assert lines[1].endswith("|IJKLMNOP|")


def test_segments_table_from_recorded_6_12_load_names_roles_and_the_logged_entry():
    table = parse_segment_table(message("debian-6.12", "crash-corrupt", "loaded")["log"])
    text = format_segments(table, locate(table, None))
    assert " 1 purgatory      0x3dffb000     0x5000     0x4000" in text
    assert "entry: 0x3dffb160 (from the load's log)" in text


def test_segments_table_from_recorded_6_1_load_says_how_the_entry_was_found():
    table = parse_segment_table(message("debian-6.1", "crash-corrupt", "loaded")["log"])
    assert "entry: unknown" in format_segments(table, locate(table, None))
    text = format_segments(table, locate(table, (DATA / "debian-6.1" / "purgatory.ro").read_bytes()))
    assert "entry: 0x3dffa120 purgatory_start (computed from the kernel's purgatory object" in text


def test_registers_name_the_segment_each_rip_is_in():
    table = parse_segment_table(message("debian-6.12", "crash-corrupt", "loaded")["log"])
    text = format_registers(registers("debian-6.12", "crash-corrupt"), table)
    assert "RIP=" in text and "XMM" not in text
    assert "is in purgatory +0x" in text
