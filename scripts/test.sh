#!/usr/bin/env bash
# Installs everything, then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh ffcv  # the tests cover the optional FFCV backend too
bash scripts/slurm-local.sh start  # a one-node SLURM cluster: tests/test_slurm.py submits to it
python3 -m pytest -q "$@"
