"""A console relay for UARTs whose QEMU model blocks on output (the PL011 of aarch64 virt).

QEMU 7.2's PL011 writes each byte with qemu_chr_fe_write_all(), holding the big
QEMU lock until the byte is taken.  Over a Unix socket every one-byte write is a
socket buffer of its own, so a few hundred bytes of console output that nobody
reads at that instant fill the socket; the vCPU then waits with the lock held,
and QEMU's monitor (the lab's register samples) waits for the lock: a deadlock
measured here on the first QMP `info registers` after an arm64 kdump kernel
started.  (The 16550 model of x86 and riscv waits for the socket instead.)  A
thread that always reads the socket at once, and hands the bytes on in large
writes through a socket pair, keeps QEMU from ever waiting on the lab.
"""

from __future__ import annotations

import selectors
import socket
import threading

from labctl import stopping

CHUNK = 65536


def _pump(qemu: socket.socket, lab: socket.socket) -> None:
    """Copy both ways until either side closes; then close both."""
    qemu.setblocking(True)
    lab.setblocking(True)
    sel = selectors.DefaultSelector()
    peer = {qemu.fileno(): (qemu, lab), lab.fileno(): (lab, qemu)}
    sel.register(qemu, selectors.EVENT_READ)
    sel.register(lab, selectors.EVENT_READ)
    try:
        while True:
            for key, _ in sel.select():
                source, sink = peer[key.fd]
                data = source.recv(CHUNK)
                if not data:
                    return
                sink.sendall(data)
    except OSError:
        return
    finally:
        sel.close()
        for sock in (qemu, lab):
            try:
                sock.close()
            except OSError:
                pass


def relay(qemu: socket.socket) -> socket.socket:
    """The lab's end of a relay in front of QEMU's console socket (non-blocking, like the
    accepted socket it replaces); closing it ends the relay thread."""
    ours, theirs = socket.socketpair()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    stopping.start_helper(threading.Thread(target=_pump, args=(qemu, theirs), name="console-relay", daemon=True))
    ours.setblocking(False)
    return ours
