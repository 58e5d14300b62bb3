#!/usr/bin/env bash
# Installs everything the tests use, builds the docs (a broken link or a page missing from the
# navigation fails), then runs the whole test suite. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
bash scripts/slurm-local.sh start  # a one-node SLURM cluster: tests/test_slurm.py submits to it
VENV="${STUDY_VENV:-.venv}"
NO_MKDOCS_2_WARNING=1 "$VENV/bin/python" -m mkdocs build --strict --site-dir site  # not --quiet: it hides the warnings strict counts
"$VENV/bin/python" -m pytest -q "$@"
