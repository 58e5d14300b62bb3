#!/usr/bin/env bash
# Installs everything, then runs the built-in study on the CPU: plan -> run -> fit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
GRID="${1:-grids/smoke.toml}"
DB="${STUDY_DB:-sqlite:///results.db}"
study plan "$GRID" --db "$DB"
