"""The coverage table: generated scenarios and how outcomes read as protection."""

from labctl.coverage import PLACEMENTS, ROLES, Cell, cell_text, coverage_scenario, markdown


def cell(role, placement, outcome, reason="", vmcore_ok=None):
    return Cell("k", "kexec_file_load", role, placement, outcome, reason, "/x", vmcore_ok)


def test_generated_scenarios_expect_refusal_and_name_their_placement():
    scenario = coverage_scenario("kexec_load", "backup", "page-zero")
    assert scenario.name == "cov-kexec-load-backup-page-zero"
    assert scenario.load.method == "kexec_load"
    assert (scenario.corrupt.segment, scenario.corrupt.offset, scenario.corrupt.length,
            scenario.corrupt.pattern) == ("backup", "page", 4096, "zero")
    assert scenario.expect.outcome == "purgatory-refused"
    assert "backup" not in ROLES["kexec_file_load"] and "backup" in ROLES["kexec_load"]


def test_outcomes_read_as_protection():
    assert cell("kernel", "middle", "purgatory-refused").protected is True
    assert cell("purgatory", "middle", "capture-booted").protected is False
    assert cell("boot_params", "tail", "config-error").protected is None
    assert cell_text(cell("elfcorehdr", "first-byte", "capture-booted", vmcore_ok=False)) == \
        "**NOT** (capture-booted, vmcore broken)"
    assert cell_text(cell("elfcorehdr", "tail", "capture-booted", vmcore_ok=True)) == \
        "**NOT** (capture-booted)"


def test_markdown_table_has_a_row_per_role_and_a_column_per_placement():
    text = markdown([cell("kernel", "middle", "purgatory-refused"),
                     cell("purgatory", "middle", "capture-booted")])
    assert "## k, kexec_file_load" in text
    header = next(line for line in text.splitlines() if line.startswith("| segment"))
    assert header.count("|") == len(PLACEMENTS) + 2
    kernel_row = next(line for line in text.splitlines() if line.startswith("| kernel |"))
    assert kernel_row.split(" | ")[2] == "refused"
    assert "**NOT** (capture-booted)" in text
