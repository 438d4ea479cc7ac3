"""Kernels: catalogue, providers (Debian packages, paths, recipes built from source), facts, images to load."""
