"""The guest: QEMU machine, its RAM, its console and control channels, the assets it boots with."""
