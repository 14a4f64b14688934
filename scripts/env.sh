#!/usr/bin/env bash
# Create (or update) the pinned virtual environment in .venv (this project, editable, with the extras `all` of
# pyproject.toml, pinned by constraints.txt); sourced by test.sh and book.sh.
# Needs only Python 3.11 on PATH. torch is the CPU build 2.13.0, pinned through constraints.txt.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV="$ROOT/.venv"
STAMP="$VENV/.fusionbook-env"
WANT="$(cat requirements.txt constraints.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[env] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
pipq() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "[env] installing pinned requirements (torch 2.13.0 CPU first)"
  pipq -c constraints.txt torch==2.13.0
  # the build backend first (pyproject.toml needs setuptools>=77), then this project with all its extras
  # (pyproject.toml is the one list of dependencies; constraints.txt pins them), editable
  pipq -c constraints.txt setuptools wheel
  pipq --no-build-isolation -c constraints.txt -r requirements.txt
  # configilm ships real reBEN patches (LMDB) used by the tests; only its data files are needed.
  pipq --no-deps configilm==0.7.1
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (fusionbook)" >/dev/null
  # configilm is installed without its (heavy) dependencies on purpose: only its data files are used
  if "$VENV/bin/python" -m pip check | grep -v '^configilm ' | grep -v '^No broken requirements' ; then
    echo "[env] pip check found broken requirements (above)" >&2
    exit 1
  fi
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
# keep kernels and matplotlib from writing into the home folder
export IPYTHONDIR="$ROOT/.cache/ipython" MPLCONFIGDIR="$ROOT/.cache/matplotlib"
export JUPYTER_CONFIG_DIR="$ROOT/.cache/jupyter" JUPYTER_DATA_DIR="$ROOT/.cache/jupyter-data"
export JUPYTER_PLATFORM_DIRS=1 PYDEVD_DISABLE_FILE_VALIDATION=1
mkdir -p "$IPYTHONDIR" "$MPLCONFIGDIR"
