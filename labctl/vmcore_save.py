"""--save-vmcore: a filtered, compressed dump streamed out of the capture kernel.

The capture helper runs `makedumpfile -F -c -d 31 /proc/vmcore` (flattened, so
that it writes to a pipe; zlib-compressed pages; zero, cache, user and free
pages left out) and sends the stream over the control port in base64 chunks,
then its length and SHA-256.  The host writes the chunks to vmcore.flat,
checks length and digest, and rebuilds the usual kdump-compressed file with
the host's `makedumpfile -R` (what crash, drgn with libkdumpfile and
`makedumpfile --dump-dmesg` open).  The serial line is the one channel every
guest kernel has; it moves a few hundred KB/s under TCG, which is why the
dump is filtered and compressed first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import shutil
import subprocess
from pathlib import Path

from labctl.errors import InfraError

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

    def finish(self, saved: dict) -> dict:
        """Check the stream against the guest's totals and rebuild; the evidence to record."""
        self._file.close()
        evidence = {"rc": saved.get("rc"), "bytes": self.bytes, "chunks": self.chunks,
                    "sha256": self._digest.hexdigest(), "makedumpfile": saved.get("output", []),
                    "problems": []}
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
