#!/usr/bin/env bash
# Installs what one command needs into a virtual environment; never into the system's Python.
#   bash scripts/setup.sh          # the package and the built-in data: enough for `bash scripts/demo.sh`
#   bash scripts/setup.sh test     # ... and everything the tests and the docs build use
#
# The environment is .venv at the repository root, or $STUDY_VENV (any folder with bin/python:
# a virtual environment or a conda environment of your own, made with your own CUDA build of torch).
# torch is installed only where none is there, and then as the pinned CPU build torch==2.13.0
# (an unpinned torch would download a multi-GB CUDA build). Debian packages are installed with
# apt-get when this runs as root (or with sudo); otherwise the one line to run is printed.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT="${1:-demo}"
case "$WHAT" in
  demo) APT_PACKAGES="dataset-fashion-mnist"; EXTRAS="" ;;
  # The tests: PostgreSQL for the multi-worker tests, g++ for torch.compile on the CPU, Chromium to open
  # the study's page headless, and the Debian libraries the optional FFCV backend compiles against.
  test) APT_PACKAGES="dataset-fashion-mnist postgresql g++ chromium libopencv-dev libturbojpeg0-dev pkg-config"
        EXTRAS="[dev,ffcv]" ;;
  *) echo "error: unknown target '$WHAT'; valid: demo, test" >&2; exit 2 ;;
esac
VENV="${STUDY_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

# Debian packages. As root apt-get runs as it is; otherwise through sudo when there is one.
apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "error: missing Debian packages: $*; run as root: apt-get install -y $*" >&2; exit 1
    fi
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
if command -v dpkg >/dev/null 2>&1; then
  missing=""
  for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  # shellcheck disable=SC2086  # one word per package
  [ -z "$missing" ] || apt_install $missing
else
  echo "note: not a Debian system; install these yourself if a command needs them: $APT_PACKAGES" >&2
fi

# The virtual environment, with the Python found on PATH (Debian's own python3 included).
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || {
    echo "error: scaling-study needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version 2>&1)." \
         "Set PYTHON=/path/to/python3.11 and run this again" >&2; exit 1; }
  if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"  # Debian leaves a half-made environment without pip when python3-venv is missing
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt_install python3-venv
      "$PYTHON" -m venv "$VENV"
    else
      echo "error: '$PYTHON -m venv' failed; on Debian or Ubuntu run: sudo apt-get install python3-venv" >&2
      exit 1
    fi
  fi
fi
PIP="$VENV/bin/python -m pip"
# A torch already there (a GPU user's CUDA build, say) is kept as it is.
"$VENV/bin/python" -c "import torch" 2>/dev/null || $PIP install -q torch==2.13.0
$PIP install -q -e ".$EXTRAS"
