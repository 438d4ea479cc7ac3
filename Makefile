# kexec-lab: `make run` runs crash-corrupt on the default kernel, `make test` runs the suite.
# Both install what is missing first: Debian packages (as root; otherwise the exact
# apt-get line is printed), the Python environment, and kernels.  `make run` installs only
# what running the lab on x86_64 guests needs; `make setup` (and so `make test`) adds the
# test-only packages, the test extras, the kernels the tests boot, the tools recipe kernels
# are built with, and what arm64 and riscv64 guests need (QEMU, cross compilers, Debian's arm64 lists).

PYTHON ?= python3
VENV := .venv
LABCTL := $(VENV)/bin/labctl
PYTEST := $(VENV)/bin/pytest
STAMPS := .cache/stamps
# What running the lab uses from Debian (make run).
APT_PACKAGES := qemu-system-x86 busybox-static gcc libc6-dev python3-venv cpio kexec-tools
# makedumpfile: --save-vmcore writes the dump with it in the capture kernel (the host's binary,
# carried into the guest) and rebuilds it on the host (makedumpfile -R); the e2e test reads it back.
APT_PACKAGES += makedumpfile
# zstd, lz4: unpack the vmlinux inside a bzImage (the elf-vmlinux bad image)
APT_PACKAGES += zstd lz4
# What the tests and recipe kernels add (make setup, make test).
# chromium: the matrix report test renders report.html headless.
TEST_APT_PACKAGES := chromium
# labctl console --gdb: the e2e test attaches real gdb at purgatory's entry point.
TEST_APT_PACKAGES += gdb
# The fault suite (tests/e2e/test_faults.py, as root) mounts a read-only bind and a tiny tmpfs.
TEST_APT_PACKAGES += mount
# userland: debian (labctl/guest/rootfs.py): mmdebstrap builds the Debian 12 root disk the
# distro-kdump scenarios boot; debugfs (e2fsprogs) reads their /var/crash disk on the host.
TEST_APT_PACKAGES += mmdebstrap e2fsprogs
# Signature images and the lab's signing keys (signing.py), for the signature scenarios:
# sbsign/sbattach/sbverify, openssl.
APT_PACKAGES += sbsigntool openssl
# ---- Per-kernel package sets (a CI shard installs only its kernel's: make ci-shard-setup).
# APT_PACKAGES above is what an x86_64 guest needs (make run); these add the rest.
# Recipe kernels (guests/kernels/*.yaml): Debian's kernel source, what building it needs, and
# ccache (labctl/kernel/ccache.py: recipes differing by a patch or an option share objects).
RECIPE_APT_PACKAGES := linux-source-6.12 build-essential bc bison flex libelf-dev libssl-dev xz-utils patch ccache
# arm64 and riscv64 guests (labctl/config/arch.py): QEMU for them (riscv64's OpenSBI ships in
# qemu-system-data), the cross compilers and C libraries for their recipe kernels and the
# static guest helper.  Guest userspace for arm64 (busybox-static, kexec-tools and its
# libraries) comes from Debian's arm64 archive: apt-get download needs that foreign
# architecture's lists (the arm64 stamp adds it).
ARM64_APT_PACKAGES := qemu-system-arm gcc-aarch64-linux-gnu libc6-dev-arm64-cross
RISCV64_APT_PACKAGES := qemu-system-misc gcc-riscv64-linux-gnu libc6-dev-riscv64-cross
# What make ci-local adds: gitlab-ci-local (npm, pinned: 4.75 needs Node >= 22, 4.60 runs on
# Debian 12's Node 18 and on 20; child pipelines need >= 4.56), rsync, which it moves artifacts
# and caches with, and what its re2 module is compiled with (no prebuilt download here).
GITLAB_CI_LOCAL_VERSION := 4.60.0
CI_LOCAL_APT_PACKAGES := rsync git g++ make python3
# Recipe kernels the end-to-end tests boot; built once, then cache hits (seconds).
RECIPE_KERNELS := tiny-6.12-serial tiny-6.12-no-digest tiny-6.12-arm64 tiny-6.12-riscv64 tiny-6.12-sig tiny-6.12-sig-force
# Debian root disks the end-to-end tests boot (as root: mmdebstrap and chroot; built once per
# kernel, package versions and guests/debian files: 2-4 min, ~320 MiB; then cache hits).
ROOTFS_KERNELS := debian-6.12
# Kernels the end-to-end tests boot (the default kernel comes first).
TEST_KERNELS := debian-6.12 debian-6.1
PYTEST_ARGS ?=
# The suite runs on TEST_JOBS pytest-xdist workers, a test file at a time each (--dist
# loadfile: a module's fixtures run once), in collection order (tests/e2e before tests/unit,
# so the long files start first); every e2e test marks what it starts (tests/e2e/conftest.py
# no_leaks), so one worker's guests never count as the other's leaks.  TEST_JOBS=1 runs it
# in one process.
TEST_JOBS ?= 2
PYTEST_PARALLEL = $(if $(filter-out 1,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder)

.PHONY: ci-venv ci-merge-setup ci-shard-setup ci-local
.PHONY: setup run-setup run test test-full unit e2e lint bench clean distclean matrix bench-matrix recipes bench-recipe bench-repeat bench-smp bench-snapshot bench-distro
MATRIX_ARGS ?= --jobs 2

# What `make run` needs: the lab's Debian packages, the lab's Python packages, the default kernel.
run-setup: $(STAMPS)/apt $(STAMPS)/venv $(STAMPS)/default-kernel

# Everything: the tests' packages and Python extras too, the kernels the tests boot, and what
# every catalogue kernel needs (recipe build tools, arm64 and riscv64).
ALL_KERNEL_STAMPS := $(STAMPS)/apt-recipes $(STAMPS)/apt-arm64 $(STAMPS)/apt-riscv64
setup: run-setup $(STAMPS)/apt-test $(STAMPS)/venv-test $(STAMPS)/kernels $(ALL_KERNEL_STAMPS) $(STAMPS)/rootfs

# $(call apt_install,PACKAGES): install the missing ones (as root), else print the apt-get line.
define apt_install
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -ne 0 ]; then \
	    echo "kexec-lab needs Debian packages that are not installed. Run:"; \
	    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends$$missing"; \
	    exit 2; \
	  fi; \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

$(STAMPS)/apt: Makefile
	@mkdir -p $(STAMPS)
	$(call apt_install,$(APT_PACKAGES))
	@if ! apt-cache show --no-all-versions linux-image-6.12-cloud-amd64 >/dev/null 2>&1; then \
	  if [ "$$(id -u)" -ne 0 ]; then echo "the package lists do not know the catalogue kernels. Run: sudo apt-get update"; exit 2; fi; \
	  apt-get update -qq; \
	fi
	@touch $@

# ---- Per-kernel stamps (see the package sets above).
$(STAMPS)/apt-recipes: Makefile
	@mkdir -p $(STAMPS)
	$(call apt_install,$(RECIPE_APT_PACKAGES))
	@touch $@

$(STAMPS)/apt-arm64: Makefile
	@mkdir -p $(STAMPS)
	$(call apt_install,$(ARM64_APT_PACKAGES))
	@if ! dpkg --print-foreign-architectures | grep -qx arm64; then \
	  if [ "$$(id -u)" -ne 0 ]; then echo "arm64 guests need Debian's arm64 packages. Run: sudo dpkg --add-architecture arm64 && sudo apt-get update"; exit 2; fi; \
	  dpkg --add-architecture arm64 && apt-get update -qq; \
	fi
	@if ! apt-cache show --no-all-versions busybox-static:arm64 >/dev/null 2>&1; then \
	  if [ "$$(id -u)" -ne 0 ]; then echo "the package lists do not know Debian's arm64 packages. Run: sudo apt-get update"; exit 2; fi; \
	  apt-get update -qq; \
	fi
	@touch $@

$(STAMPS)/apt-riscv64: Makefile
	@mkdir -p $(STAMPS)
	$(call apt_install,$(RISCV64_APT_PACKAGES))
	@touch $@

# Python and venv only: what the CI plan and merge jobs need (and every venv).
$(STAMPS)/apt-python: Makefile
	@mkdir -p $(STAMPS)
	$(call apt_install,python3-venv)
	@touch $@

$(STAMPS)/apt-test: Makefile $(STAMPS)/apt
	$(call apt_install,$(TEST_APT_PACKAGES))
	@touch $@

$(STAMPS)/venv: pyproject.toml $(STAMPS)/apt-python
	@mkdir -p $(STAMPS)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[dump]'
	@touch $@

$(STAMPS)/venv-test: pyproject.toml $(STAMPS)/venv
	$(VENV)/bin/python -m pip install -q -e '.[test,dump]'
	@touch $@

$(STAMPS)/default-kernel: lab.yaml $(STAMPS)/venv
	$(LABCTL) kernel fetch
	@touch $@

$(STAMPS)/kernels: lab.yaml $(STAMPS)/venv
	$(LABCTL) kernel fetch $(TEST_KERNELS)
	@touch $@

$(STAMPS)/rootfs: lab.yaml labctl/guest/rootfs.py $(wildcard guests/debian/* guests/debian/*/*) $(STAMPS)/kernels $(STAMPS)/apt-test
	$(LABCTL) rootfs build $(ROOTFS_KERNELS)
	@touch $@

run: run-setup
	$(LABCTL) run crash-corrupt

test: setup recipes lint
	$(PYTEST) $(PYTEST_PARALLEL) --durations=20 $(PYTEST_ARGS)

# The lint and type gate: ruff (pyflakes, pycodestyle, isort, bugbear) over the code and the
# tests, mypy over labctl/ (pyproject.toml has both settings). `make test` runs it first.
# A sorted-imports complaint after a rebase: $(VENV)/bin/ruff check --fix fixes it.
lint: $(STAMPS)/venv-test
	$(VENV)/bin/ruff check labctl tests bench conftest.py
	$(VENV)/bin/mypy

unit: $(STAMPS)/venv-test
	$(PYTEST) -m 'not e2e' $(PYTEST_ARGS)

e2e: setup recipes
	$(PYTEST) -m e2e $(PYTEST_PARALLEL) $(PYTEST_ARGS)

# make test plus the tests over the whole catalogue (fresh vs forked on both Debian kernels).
test-full: setup recipes lint
	$(PYTEST) --full $(PYTEST_PARALLEL) --durations=20 $(PYTEST_ARGS)

# Build the recipe kernels the tests boot (first time a few minutes each, then cache hits).
recipes: setup
	$(LABCTL) kernel build $(RECIPE_KERNELS)

bench-recipe: setup recipes
	$(VENV)/bin/python bench/recipe_vs_debian.py

bench: setup
	$(VENV)/bin/python bench/time_to_verdict.py

matrix: setup
	$(LABCTL) matrix $(MATRIX_ARGS)

bench-matrix: setup
	$(VENV)/bin/python bench/matrix.py

# crash-corrupt and crash-intact 10 times each: flake count and time-to-verdict spread.
bench-repeat: setup
	$(VENV)/bin/python bench/repeatability.py

# crash-intact at smp 1 and smp 2 on both Debian kernels: spurious oopses, time-to-verdict.
bench-smp: setup
	$(VENV)/bin/python bench/smp_repeatability.py

# forked vs fresh runs, coverage, matrix and fuzz at -j 2, with peak RSS and /dev/shm per job.
bench-snapshot: setup
	$(VENV)/bin/python bench/snapshot.py

# Debian's own kdump stack (distro-kdump) against the lab's helper, same kernel and question.
bench-distro: setup
	$(VENV)/bin/python bench/distro_vs_helper.py

clean:  # artifacts/README.md is part of the repository
	[ ! -d artifacts ] || find artifacts -mindepth 1 ! -name README.md -exec rm -rf {} +
	rm -rf .pytest_cache .mypy_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) .cache

# ---- CI (docs/ci.md).  ci/plan.sh, ci/shard.sh and ci/gitlab-merge.sh call these, on GitLab,
# GitHub and under make ci-local alike.
# Plan and merge jobs: the venv only.
ci-venv: $(STAMPS)/venv

# GitLab's merge job also fetches the baseline through the API.
ci-merge-setup: ci-venv
	$(call apt_install,curl ca-certificates)

# A shard: the lab's x86_64 packages and the venv, plus only what its kernel needs:
# KERNEL_ARCH (x86_64, arm64, riscv64) and KERNEL_SOURCE (debian, recipe, path), from labctl ci-plan.
KERNEL_ARCH ?= x86_64
KERNEL_SOURCE ?= debian
ci-shard-setup: $(STAMPS)/apt $(STAMPS)/venv $(if $(filter recipe,$(KERNEL_SOURCE)),$(STAMPS)/apt-recipes) \
                $(if $(filter arm64 riscv64,$(KERNEL_ARCH)),$(STAMPS)/apt-$(KERNEL_ARCH))

# The nightly pipeline (.gitlab-ci.yml: plan -> shards -> merge) run here by gitlab-ci-local's
# shell executor, one night per call, on a small selection; the next call diffs against the
# last good one.  CI_KERNELS / CI_SCENARIOS choose (space-separated), CI_SHARDS shards per kernel.
CI_KERNELS ?= debian-6.12
CI_SCENARIOS ?= crash-corrupt crash-intact
CI_SHARDS ?= 1
CI_LOCAL_DIR ?= .cache/ci-local/pipeline
CI_LOCAL_TOOL_DIR := .cache/ci-local/tool
CI_LOCAL := $(CI_LOCAL_TOOL_DIR)/node_modules/.bin/gitlab-ci-local
# Installed once per version (its re2 module compiles for minutes on 2 cores).
$(STAMPS)/gitlab-ci-local-$(GITLAB_CI_LOCAL_VERSION):
	@mkdir -p $(STAMPS)
	$(call apt_install,$(CI_LOCAL_APT_PACKAGES))
	@if ! command -v npm >/dev/null 2>&1; then \
	  if [ "$$(id -u)" -ne 0 ]; then echo "gitlab-ci-local needs Node.js and npm. Run: sudo apt-get install -y nodejs npm"; exit 2; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm; \
	fi
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' || \
	  { echo "gitlab-ci-local $(GITLAB_CI_LOCAL_VERSION) needs Node.js >= 18 (node --version: $$(node --version))"; exit 2; }
	mkdir -p $(CI_LOCAL_TOOL_DIR)
	npm install --no-audit --no-fund --loglevel=error --prefix $(CI_LOCAL_TOOL_DIR) gitlab-ci-local@$(GITLAB_CI_LOCAL_VERSION)
	@touch $@

ci-local: $(STAMPS)/gitlab-ci-local-$(GITLAB_CI_LOCAL_VERSION) $(STAMPS)/venv
	CI_LOCAL_TOOL=$(CI_LOCAL) CI_LOCAL_DIR=$(CI_LOCAL_DIR) CI_KERNELS="$(CI_KERNELS)" \
	  CI_SCENARIOS="$(CI_SCENARIOS)" CI_SHARDS="$(CI_SHARDS)" sh ci/local-night.sh
