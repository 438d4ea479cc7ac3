#!/bin/sh
# A fresh debian:12 image has no make: install it (as root), the rest is the Makefile's job.
set -eu
if ! command -v make >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends make
fi
