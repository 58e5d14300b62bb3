#!/usr/bin/env bash
# Installs what the demo needs, then runs the built-in study on the CPU: plan -> run -> fit.
#   bash scripts/demo.sh                      # grids/demo.toml into sqlite:///results.db, about 10 minutes
#   bash scripts/demo.sh grids/smoke.toml     # any other grid
# Everything it writes is ignored by git: results.db, runs/ (checkpoints, logs, curves) and reports/
# (figures, report.md, fit.json, index.html). Re-running it continues where it stopped: planning adds
# nothing new, `run --resume` picks up interrupted jobs, and the fit is redone over everything recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
VENV="${STUDY_VENV:-.venv}"
STUDY="$VENV/bin/study"
GRID="${1:-grids/demo.toml}"
export STUDY_DB="${STUDY_DB:-sqlite:///results.db}"
NAME=$("$VENV/bin/python" -c "import sys, tomllib; print(tomllib.load(open(sys.argv[1], 'rb'))['study']['name'])" "$GRID")
"$STUDY" plan "$GRID"
"$STUDY" run --resume --study "$NAME"
"$STUDY" fit --study "$NAME" --out reports
echo "plots, report and page: $(pwd)/reports (index.html, report.md, fit.json, fig1_error_vs_compute.png, ...)"
