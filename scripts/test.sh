#!/usr/bin/env bash
# Installs everything, then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh ffcv  # the tests cover the optional FFCV backend too
python3 -m pytest -q "$@"
