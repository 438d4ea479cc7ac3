"""The control channel (ttyS1): text commands to the guest helper, JSON lines back.

Guest output is untrusted input: lines are bounded in length, parsed with
json.loads only, and anything that is not a JSON object is a protocol error.
Every line in either direction goes to a transcript with host timestamps.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from labctl.errors import InfraError

MAX_LINE = 2 * 1024 * 1024  # the capture kernel's vmcore head, hex encoded, fits
# --save-vmcore's base64 chunks (vmcore_save.py) would fill the transcript with the dump itself
BULK_PREFIX = b'{"type":"vmcore-chunk"'


class ProtocolError(InfraError):
    """The guest helper sent something that is not a valid message."""


def parse_message(line: bytes) -> dict:
    """One control line -> message dict, or ProtocolError saying what was wrong."""
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"control channel: not JSON ({exc}): {line[:120]!r}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError(f"control channel: not a message object: {line[:120]!r}")
    return message


class ControlChannel:
    def __init__(self, sock: socket.socket, transcript: Path, t0: float):
        self.sock = sock
        self.t0 = t0
        self._pending = bytearray()
        self._log = open(transcript, "a", encoding="utf-8")
        self.messages: list[dict] = []
        self.rejected = 0

    def _record(self, direction: str, text: str) -> None:
        self._log.write(f"[{time.monotonic() - self.t0:9.3f}] {direction} {text}\n")
        self._log.flush()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, command: str) -> None:
        if "\n" in command:
            raise ValueError("control commands are single lines")
        self._record(">", command)
        self.sock.sendall(command.encode() + b"\n")

    def pump(self, strict: bool = True) -> list[dict]:
        """Read what is available; return the complete messages it finished.

        strict=False is for the moments around a panic and a kernel switch, when
        a half-written line from the dying kernel is expected: such lines are
        kept in the transcript and counted in `rejected` instead of raising.
        """
        try:
            while chunk := self.sock.recv(65536):
                self._pending += chunk
                if len(self._pending) > MAX_LINE and b"\n" not in self._pending:
                    raise ProtocolError(f"control channel: a line longer than {MAX_LINE} bytes")
        except BlockingIOError:
            pass
        new = []
        while b"\n" in self._pending:
            line, _, rest = bytes(self._pending).partition(b"\n")
            self._pending = bytearray(rest)
            line = line.strip(b"\r")
            if not line:
                continue
            self._record("<", line.decode("utf-8", "replace") if not line.startswith(BULK_PREFIX)
                         else f"{line[:48].decode('ascii', 'replace')}... ({len(line)} bytes)")
            try:
                new.append(parse_message(line))
            except ProtocolError:
                if strict:
                    raise
                self.rejected += 1
        self.messages += new
        return new

    def close(self) -> None:
        self._log.close()
