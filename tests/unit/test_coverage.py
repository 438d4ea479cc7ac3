"""The coverage table: generated scenarios and how outcomes read as protection."""

from labctl.campaigns.coverage import PLACEMENTS, Cell, cell_text, coverage_scenario, markdown
from labctl.campaigns.load_coverage import ROWS, LoadCell, load_scenario
from labctl.campaigns.load_coverage import markdown as load_markdown
from labctl.config.arch import ARM64, RISCV64, X86_64


def cell(role, placement, outcome, reason="", vmcore_ok=None, arch="x86_64", kernel="k"):
    return Cell(kernel, "kexec_file_load", role, placement, outcome, reason, "/x", vmcore_ok, arch)


def test_generated_scenarios_expect_refusal_and_name_their_placement():
    scenario = coverage_scenario("kexec_load", "backup", "page-zero")
    assert scenario.name == "cov-kexec-load-backup-page-zero"
    assert scenario.load.method == "kexec_load"
    assert (scenario.corrupt.segment, scenario.corrupt.offset, scenario.corrupt.length,
            scenario.corrupt.pattern) == ("backup", "page", 4096, "zero")
    assert scenario.expect.outcome == "purgatory-refused"
    assert "backup" not in X86_64.roles("kexec_file_load") and "backup" in X86_64.roles("kexec_load")


def test_roles_and_methods_follow_the_architecture():
    """arm64's kexec_file_load loads no purgatory; riscv64 has only kexec_file_load here
    (no kexec-tools for riscv64 in Debian 12); the device tree replaces boot_params."""
    assert "purgatory" not in ARM64.roles("kexec_file_load") and "dtb" in ARM64.roles("kexec_file_load")
    assert "purgatory" in ARM64.roles("kexec_load")
    assert RISCV64.methods == ("kexec_file_load",) and RISCV64.roles("kexec_load") == ()


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
    assert "## k (x86_64), kexec_file_load" in text
    header = next(line for line in text.splitlines() if line.startswith("| segment"))
    assert header.count("|") == len(PLACEMENTS) + 2
    kernel_row = next(line for line in text.splitlines() if line.startswith("| kernel |"))
    assert kernel_row.split(" | ")[2] == "refused"
    assert "**NOT** (capture-booted)" in text


def load_cell(image, mode, outcome, errno=None, method="kexec_file_load", kernel="k"):
    return LoadCell(kernel, method, image, mode, outcome, errno, "", "/x")


def test_load_scenarios_stop_after_the_load_with_the_modes_boot_words():
    locked = load_scenario("kexec_file_load", "wrong-key", "lockdown=integrity")
    assert (locked.trigger, locked.load.kernel, locked.boot_cmdline) == ("none", "wrong-key",
                                                                         "lockdown=integrity")
    assert locked.corrupt is None and not locked.then_intact
    booted = load_scenario("kexec_load", "default", "as booted")
    assert booted.boot_cmdline == "" and booted.load.method == "kexec_load"
    assert booted.name == "load-kexec-load-default-booted"
    assert ("kexec_load", "default") in ROWS and ("kexec_file_load", "tampered") in ROWS


def test_load_table_says_loads_or_the_errno_per_image_and_mode():
    cells = [load_cell("signed", "as booted", "load-accepted"),
             load_cell("signed", "lockdown=integrity", "load-accepted"),
             load_cell("unsigned", "as booted", "load-rejected", "ENODATA"),
             load_cell("unsigned", "lockdown=integrity", "load-rejected", "ENODATA"),
             load_cell("default", "lockdown=integrity", "load-rejected", "EPERM", "kexec_load"),
             load_cell("garbage", "as booted", "infra-error")]
    text = load_markdown(cells, {"k": True})
    assert "## k (KEXEC_SIG_FORCE=y)" in text
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| image")}
    assert rows["signed"] == ["loads", "loads |"]
    assert rows["unsigned"] == ["ENODATA", "ENODATA |"]
    assert rows["default via kexec_load"] == ["", "EPERM |"]
    assert rows["garbage"][0] == "**infra-error**"  # never passed off as a refusal
    assert "wrong-key" not in rows  # not measured: no empty row
    assert "KEXEC_SIG_FORCE" not in load_markdown(cells, {"k": False})


def test_markdown_table_per_architecture_uses_its_roles():
    text = markdown([cell("kernel", "middle", "capture-booted", arch="arm64", kernel="a"),
                     cell("kernel", "middle", "purgatory-refused", arch="riscv64", kernel="r")])
    arm = text.split("## a (arm64), kexec_file_load")[1].split("## ")[0]
    assert "| dtb |" in arm and "| purgatory |" not in arm and "| boot_params |" not in arm
    assert "| kernel | " in arm and "**NOT** (capture-booted)" in arm
    riscv = text.split("## r (riscv64), kexec_file_load")[1]
    assert "| purgatory |" in riscv and "| kernel |  | refused |" in riscv
