"""`labctl console`'s terminal: the person's keystrokes to the guest's ttyS0 or, after
Ctrl-], line by line to the lab prompt; the guest's console back to the screen.

One select loop serves the terminal, the console and the control channel:
pexpect's interact() would leave the control channel unread (and its transcript
unstamped) while the person types.  The stages live in interactive.LiveGuest, the
prompt's commands in lab_prompt.PromptCommands.
"""

from __future__ import annotations

import os
import select
import termios
import tty
from typing import TextIO

from labctl.console.prompt import ESCAPE_NAME, Guest, PromptCommands, Speaker
from labctl.guest.console import StampedLog
from labctl.pair.link import POLL_SECONDS

ESCAPE = b"\x1d"  # Ctrl-], as telnet uses


class Tee:
    """Console output to serial.log (stamped) and, as it arrives, to the person's terminal."""

    def __init__(self, log: StampedLog, out: TextIO):
        self.log, self.out = log, out

    def write(self, text: str) -> None:
        self.log.write(text)
        self.out.write(text)
        self.out.flush()

    def flush(self) -> None:
        self.log.flush()


class Terminal:
    """The person's terminal: raw on the guest console, as it was at the lab prompt."""

    def __init__(self, fd: int):
        self.fd = fd
        self.saved = termios.tcgetattr(fd) if os.isatty(fd) else None

    def raw(self) -> None:
        if self.saved:
            tty.setraw(self.fd, termios.TCSADRAIN)

    def restore(self) -> None:
        if self.saved:
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            except termios.error:  # the terminal is gone: nothing left to restore
                pass

    def read(self) -> bytes:
        """What was typed; b'' when the terminal is gone (EOF, or EIO from a closed pty)."""
        try:
            return os.read(self.fd, 4096)
        except OSError:
            return b""


def send_all(sock, data: bytes) -> None:
    """sendall for the console's non-blocking socket: a long paste waits, it never fails."""
    view = memoryview(data)
    while view:
        select.select([], [sock], [], POLL_SECONDS)
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            continue


class TerminalBridge:
    """Moves bytes between the person's terminal, the guest console and the lab prompt."""

    def __init__(self, guest: Guest, commands: PromptCommands, terminal: Terminal,
                 speaker: Speaker):
        self.guest, self.commands, self.terminal, self.speaker = guest, commands, terminal, speaker

    def serve(self) -> None:
        """Hand the terminal over until the person quits, the terminal closes or QEMU exits."""
        session = self.guest.session
        self.to_console()
        pending = b""
        fds = [self.terminal.fd, session.console.spawn.child_fd, session.control.fileno()]
        while True:
            ready, _, _ = select.select(fds, [], [], POLL_SECONDS)
            if fds[1] in ready:
                session.console.poll({})
            if fds[2] in ready:
                session.control.pump(strict=False)
            if not session.machine.alive():
                return self.guest_gone()
            if fds[0] not in ready:
                continue
            data = self.terminal.read()
            if not data:
                return self.speaker.say("the terminal closed: ending the session")
            rest = self.route(pending + data)
            if rest is None:
                return None
            pending = rest

    def route(self, pending: bytes) -> bytes | None:
        """Input goes to the guest on the console and line by line to the prompt; returns
        an unfinished prompt line, or None after `quit`."""
        while pending:
            if self.speaker.on_console:
                pending = self.keystrokes(pending)
                continue
            line, newline, rest = pending.partition(b"\n")
            if not newline:
                return pending
            pending = rest
            after = self.commands.run(line.decode(errors="replace"))
            if after == "quit":
                return None
            if after == "console":
                self.to_console()
            else:
                self.prompt()
        return b""

    def guest_gone(self) -> None:
        self.terminal.restore()
        self.speaker.on_console = False
        self.speaker.say(f"the guest is gone: {self.guest.session.machine.death_reason()}")
        self.guest.after_exit()

    def keystrokes(self, data: bytes) -> bytes:
        """Send what was typed to the guest up to Ctrl-]; return what came after it."""
        typed, escape, rest = data.partition(ESCAPE)
        if typed:
            send_all(self.guest.session.machine.console, typed)
        if escape:
            self.to_prompt()
        return rest

    def to_console(self) -> None:
        self.speaker.say(f"\n--- on the guest console (ttyS0); {ESCAPE_NAME} for the lab prompt ---")
        self.terminal.raw()
        self.speaker.on_console = True

    def to_prompt(self) -> None:
        self.terminal.restore()
        self.speaker.on_console = False
        self.speaker.say(f"\n--- lab prompt (stage {self.guest.stage}); `help` lists the commands ---")
        self.prompt()

    def prompt(self) -> None:
        print("lab> ", end="", flush=True)
