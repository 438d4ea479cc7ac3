"""The control channel treats guest output as untrusted: bounded, JSON only, never evaluated."""

import socket

import pytest

from labctl.guest.control import MAX_LINE, ControlChannel, ProtocolError, parse_message


@pytest.fixture
def channel(tmp_path):
    host, guest = socket.socketpair()
    host.setblocking(False)
    chan = ControlChannel(host, tmp_path / "control.log", t0=0.0)
    yield chan, guest
    chan.close()
    host.close()
    guest.close()


def test_messages_are_split_on_lines_and_logged(channel, tmp_path):
    chan, guest = channel
    guest.sendall(b'{"type":"hello","role":"primary"}\n{"type":"lo')
    assert chan.pump() == [{"type": "hello", "role": "primary"}]
    guest.sendall(b'aded","rc":0}\r\n\n')
    assert chan.pump() == [{"type": "loaded", "rc": 0}]
    chan.send("panic sysrq")
    assert guest.recv(100) == b"panic sysrq\n"
    log = (tmp_path / "control.log").read_text()
    assert '< {"type":"hello","role":"primary"}' in log and "> panic sysrq" in log


@pytest.mark.parametrize("line", [b"not json", b"[1,2]", b'{"no":"type"}', b'{"type":7}',
                                  b"\xff\xfe", b"__import__('os')"])
def test_garbage_is_a_protocol_error(line):
    with pytest.raises(ProtocolError):
        parse_message(line)


def test_lenient_mode_counts_garbage_instead_of_raising(channel):
    chan, guest = channel
    guest.sendall(b'\x00\x01garbage from a dying kernel\n{"type":"hello","role":"capture"}\n')
    assert chan.pump(strict=False) == [{"type": "hello", "role": "capture"}]
    assert chan.rejected == 1


def test_oversized_line_is_refused(channel):
    chan, guest = channel
    guest.setblocking(False)
    sent = 0
    with pytest.raises(ProtocolError, match="longer than"):
        while True:
            try:
                sent += guest.send(b"x" * 65536)
            except BlockingIOError:
                pass
            chan.pump()
            assert sent < MAX_LINE * 4


def test_commands_are_single_lines(channel):
    chan, _ = channel
    with pytest.raises(ValueError):
        chan.send("load 2 a b\npanic sysrq")


def test_console_forget_drops_old_output_but_keeps_the_log(tmp_path):
    """The primary kernel's boot banner must not pass for a capture kernel's later on."""
    import os
    import re
    import time

    from labctl.guest.console import Console, StampedLog

    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    console = Console(read_end, StampedLog(tmp_path / "serial.log", time.monotonic()))
    banner = {"banner": re.compile(r"Linux version \S+")}
    os.write(write_end, b"Linux version 6.12.0 (primary)\n" * 100)
    console.poll({})
    console.forget()
    assert console.poll(banner) == []
    os.write(write_end, b"Linux version 6.12.0 (capture)\n")
    assert console.poll(banner) == [("banner", "Linux version 6.12.0")]
    console.close()
    os.close(write_end)
    assert (tmp_path / "serial.log").read_text().count("(primary)") == 100
