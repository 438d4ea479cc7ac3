"""run_tool (tools.py) on real programs: a missing, slow or failing one is an infrastructure
error (exit 3) naming what the lab was doing and the command, with the program's last words."""

import time

import pytest

from labctl.errors import EXIT_INFRA
from labctl.kernel.debian import unpack_deb
from labctl.tools import ToolError, run_tool


def test_output_comes_back():
    assert run_tool(["tar", "--version"], "asking tar its version", 10).stdout.startswith("tar (GNU tar)")


def test_a_missing_program_says_so():
    with pytest.raises(ToolError) as err:
        run_tool(["no-such-program-kexec-lab"], "testing", 10)
    assert str(err.value).startswith("testing: no-such-program-kexec-lab not found")
    assert err.value.exit_code == EXIT_INFRA


def test_a_program_past_its_timeout_is_stopped():
    start = time.monotonic()
    with pytest.raises(ToolError) as err:
        run_tool(["sleep", "30"], "waiting", 0.3)
    assert time.monotonic() - start < 10
    assert str(err.value) == "waiting: 'sleep 30' did not finish within 0.3 s"


def test_a_failure_quotes_the_command_and_the_tail_of_stderr(tmp_path):
    with pytest.raises(ToolError) as err:
        run_tool(["tar", "-xf", str(tmp_path / "missing.tar")], "unpacking the source", 10)
    message = str(err.value)
    assert message.startswith(f"unpacking the source failed: 'tar -xf {tmp_path}/missing.tar' exited 2: ")
    assert "Cannot open" in message and err.value.proc.returncode == 2


def test_check_false_hands_back_the_failed_run(tmp_path):
    proc = run_tool(["tar", "-xf", str(tmp_path / "missing.tar")], "unpacking", 10, check=False)
    assert proc.returncode == 2 and "Cannot open" in proc.stderr


def test_a_broken_deb_is_an_infrastructure_error_naming_dpkg_deb(tmp_path):
    deb = tmp_path / "linux-image-broken.deb"
    deb.write_bytes(b"not an ar archive\n" * 10)
    with pytest.raises(ToolError) as err:
        unpack_deb(deb, tmp_path / "tree")
    assert err.value.exit_code == EXIT_INFRA
    assert f"unpacking linux-image-broken.deb failed: 'dpkg-deb -x {deb} {tmp_path}/tree' exited 2: " \
        in str(err.value)
    assert "dpkg-deb" in str(err.value).split("exited 2: ", 1)[1]  # its own complaint, quoted
