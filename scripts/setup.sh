#!/usr/bin/env bash
# Installs everything scaling-study needs on a fresh Debian machine (as root, or with sudo).
#   bash scripts/setup.sh          # the package, its dev extra, the built-in data, PostgreSQL
#   bash scripts/setup.sh ffcv     # ... and the optional FFCV backend (compiled against Debian libraries)
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
EXTRAS="dev"
# Debian packages: the built-in Fashion-MNIST data, a PostgreSQL server for the multi-worker tests,
# a C++ compiler for torch.compile on the CPU (`compile = true`) and, for the tests, Chromium to
# open the study's page headless.
APT_PACKAGES="dataset-fashion-mnist postgresql g++"
if [ "${1:-}" = "ffcv" ]; then  # scripts/test.sh (and so CI): the test packages too
  APT_PACKAGES="$APT_PACKAGES chromium"
fi
if [ "${1:-}" = "ffcv" ]; then
  EXTRAS="dev,ffcv"
  APT_PACKAGES="$APT_PACKAGES libopencv-dev libturbojpeg0-dev pkg-config"
fi
missing=""
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
PIP="python3 -m pip"
# The CPU build of torch 2.13.0 (a pinned version; an unpinned torch pulls a multi-GB CUDA build).
python3 -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
  || $PIP install -q torch==2.13.0
$PIP install -q -e ".[$EXTRAS]"
