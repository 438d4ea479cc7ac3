"""kexec-lab: prove end to end, on real QEMU guests, whether kexec/kdump keeps its promises."""

__version__ = "0.1.0"
