#!/bin/sh
# The nightly's job list for a CI engine (github or gitlab), as JSON on stdout: every
# catalogue kernel x shard, or the selection in KERNELS / SCENARIOS (space-separated names,
# empty: all), each job with its kernel's arch, source and cache key (labctl ci-plan).
# Usage: ci/plan.sh ENGINE
set -eu
export PIP_CACHE_DIR="$PWD/.cache/pip"  # restored and saved by the CI engine
set -f  # names are passed on as they are, never expanded as file globs
engine=$1
sh ci/need-make.sh >&2
make ci-venv >&2
.venv/bin/labctl ci-plan --engine "$engine" --shards "${SHARDS:-2}" ${KERNELS:+--kernels $KERNELS} ${SCENARIOS:+--scenarios $SCENARIOS}
