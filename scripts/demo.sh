#!/usr/bin/env bash
# Installs everything, then runs the built-in study on the CPU: plan -> run -> fit.
#   bash scripts/demo.sh                      # grids/demo.toml into sqlite:///results.db
#   bash scripts/demo.sh grids/smoke.toml     # any other grid
# Re-running it continues where it stopped: planning adds nothing new, `run --resume` picks up
# interrupted jobs, and the fit is redone over everything recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
GRID="${1:-grids/demo.toml}"
export STUDY_DB="${STUDY_DB:-sqlite:///results.db}"
STUDY=$(python3 -c "import sys, tomllib; print(tomllib.load(open(sys.argv[1], 'rb'))['study']['name'])" "$GRID")
study plan "$GRID"
study run --resume --study "$STUDY"
study fit --study "$STUDY" --out reports
echo "plots, report and page: $(pwd)/reports (index.html, report.md, fit.json, fig1_error_vs_compute.png, ...)"
