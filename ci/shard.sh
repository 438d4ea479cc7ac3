#!/bin/sh
# One nightly shard, the same script on GitLab (.gitlab/lab-jobs.yml) and GitHub
# (.github/workflows/nightly.yml): install what this kernel needs and nothing else
# (make ci-shard-setup: its arch's QEMU, a recipe's build tools and compiler), then run
# the shard's pairs into artifacts/.  Exit status: labctl matrix's (0 every pair passed).
# Usage: ci/shard.sh KERNEL I/N RUN_ID
# Environment (from ci/plan.sh): KERNEL_ARCH, KERNEL_SOURCE, SCENARIOS (empty: all).
# The caches the CI engine saves and restores live in the project directory (GitLab caches
# only paths inside it): the lab's cache in .cache/xdg/kexec-lab, pip's in .cache/pip.
set -eu
set -f  # scenario names are passed on as they are, never expanded as file globs
KERNEL=$1 SHARD=$2 RUN_ID=$3
export XDG_CACHE_HOME="$PWD/.cache/xdg" PIP_CACHE_DIR="$PWD/.cache/pip"
start=$(date +%s)
sh ci/need-make.sh
make ci-shard-setup KERNEL_ARCH="${KERNEL_ARCH:-x86_64}" KERNEL_SOURCE="${KERNEL_SOURCE:-debian}"
echo "shard setup: $(( $(date +%s) - start )) s"
status=0
.venv/bin/labctl matrix --kernels "$KERNEL" --shard "$SHARD" ${SCENARIOS:+--scenarios $SCENARIOS} --jobs "${LAB_JOBS:-2}" --run-id "$RUN_ID" --artifacts artifacts || status=$?
echo "shard $KERNEL $SHARD: $(( $(date +%s) - start )) s wall (exit $status)"
exit "$status"
