"""Evidence, pure: segment tables, verdict rules, CPUs, the dump against RAM, purgatory; tested on recorded data."""
