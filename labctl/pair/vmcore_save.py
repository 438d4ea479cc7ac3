"""--save-vmcore: a filtered, compressed dump streamed out of the capture kernel.

The capture helper runs `makedumpfile -F -c -d 23 /proc/vmcore` (flattened, so
that it writes to a pipe; zlib-compressed pages; zero, cache and free
pages left out, user pages kept: see the helper).  The stream travels through guest memory: the helper fills a
locked 4 MiB window, sends its page frames (from /proc/self/pagemap) and its
SHA-256, the host copies those pages out of the RAM file, checks the digest and
answers `next`.  A kernel whose pagemap does not give page frames gets base64
chunks over the control port instead (the serial line moves about 100 KB/s
under TCG; memory, megabytes a second).  Then the stream's length and SHA-256.
The host writes vmcore.flat, checks length and digest, and rebuilds the usual
kdump-compressed file with the host's `makedumpfile -R` (what crash, drgn with
libkdumpfile and `makedumpfile --dump-dmesg` open).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import shutil
import subprocess
from pathlib import Path

from labctl.errors import InfraError
from labctl.guest.memory import GuestMemory

PAGE = 4096

FLAT = "vmcore.flat"
VMCORE = "vmcore"


class DumpReceiver:
    """Chunks in order -> vmcore.flat, with the running length and digest."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.flat = directory / FLAT
        self._file = open(self.flat, "wb")
        self._digest = hashlib.sha256()
        self.bytes = 0
        self.chunks = 0
        self.problems: list[str] = []

    def chunk(self, message: dict) -> None:
        if message.get("seq") != self.chunks:
            raise InfraError(f"--save-vmcore: chunk {message.get('seq')} arrived, {self.chunks} expected")
        try:
            data = base64.b64decode(message.get("data", ""), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InfraError(f"--save-vmcore: chunk {self.chunks} is not base64 ({exc})") from None
        self._file.write(data)
        self._digest.update(data)
        self.bytes += len(data)
        self.chunks += 1

    def window(self, message: dict, memory: GuestMemory) -> bool:
        """A window of the stream, read from the guest RAM at the page frames it names;
        False (and a problem recorded) if it cannot be taken, so the guest stops."""
        length, pfns = message.get("bytes", 0), message.get("pfns", [])
        if message.get("seq") != self.chunks:
            return self._stop(f"window {message.get('seq')} arrived, {self.chunks} expected")
        if not (0 < length <= len(pfns) * PAGE) or not all(isinstance(p, int) and p > 0 for p in pfns):
            return self._stop(f"window {self.chunks} names no usable pages")
        try:
            data = b"".join(memory.read(pfn * PAGE, PAGE) for pfn in pfns)[:length]
        except ValueError as exc:
            return self._stop(f"window {self.chunks}: {exc}")
        if hashlib.sha256(data).hexdigest() != message.get("sha256"):
            return self._stop(f"window {self.chunks} changed before the host read it (its SHA-256 "
                              "differs from the guest's)")
        self._file.write(data)
        self._digest.update(data)
        self.bytes += length
        self.chunks += 1
        return True

    def _stop(self, problem: str) -> bool:
        self.problems.append(problem)
        return False

    def finish(self, saved: dict) -> dict:
        """Check the stream against the guest's totals and rebuild; the evidence to record."""
        self._file.close()
        evidence = {"rc": saved.get("rc"), "channel": saved.get("channel"), "bytes": self.bytes,
                    "chunks": self.chunks,
                    "sha256": self._digest.hexdigest(), "makedumpfile": saved.get("output", []),
                    "problems": list(self.problems)}
        if self.problems:
            return evidence
        if saved.get("rc") != 0:
            evidence["problems"].append(f"makedumpfile in the capture kernel exited {saved.get('rc')}")
        if (saved.get("bytes"), saved.get("sha256")) != (self.bytes, evidence["sha256"]):
            evidence["problems"].append(
                f"the stream was damaged on the way: the guest sent {saved.get('bytes')} bytes "
                f"sha256 {saved.get('sha256')}, the host got {self.bytes} bytes sha256 {evidence['sha256']}")
        if not evidence["problems"]:
            evidence.update(rebuild(self.flat, self.directory / VMCORE))
        return evidence

    def close(self) -> None:
        self._file.close()


def rebuild(flat: Path, vmcore: Path) -> dict:
    """makedumpfile -R: the flattened stream back into a kdump-compressed file."""
    tool = shutil.which("makedumpfile")
    if tool is None:
        return {"file": flat.name, "note": "makedumpfile is not installed on the host: kept the "
                                           "flattened stream (makedumpfile -R VMCORE < vmcore.flat)"}
    with open(flat, "rb") as stream:
        proc = subprocess.run([tool, "-R", str(vmcore)], stdin=stream, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"file": flat.name, "problems": [f"makedumpfile -R failed: {proc.stderr.strip()[-300:]}"]}
    flat.unlink()
    return {"file": vmcore.name, "size": vmcore.stat().st_size}
