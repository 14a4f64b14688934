#!/usr/bin/env bash
# Run the whole test suite: notebooks exported and in sync, ruff, pytest, nbdev_test.
# `bash scripts/test.sh --slow` also runs the slow tests: the paper-profile dry run of every chapter (the papers'
# exact models, batch and crop sizes for two optimiser steps on CPU; minutes each, up to ~10 GB of memory) and the
# sdist/wheel installation into fresh virtual environments.
set -euo pipefail
MARK=(-m "not slow")
if [ "${1:-}" = "--slow" ]; then MARK=(); shift; fi
source "$(dirname "$0")/env.sh"
cd "$ROOT"
start=$(date +%s)
echo "[test] nbdev_export (the package must match the notebooks)"
nbdev_export
if [ -d .git ] && ! git diff --quiet -- fusionbook; then
  echo "[test] fusionbook/ differs from the notebooks: run nbdev_export and commit" >&2
  git --no-pager diff --stat -- fusionbook >&2
  exit 1
fi
echo "[test] ruff"
ruff check .
echo "[test] nbdev_test (library notebooks)"
nbdev_test --n_workers 2 --timing
echo "[test] pytest"
python -m pytest -n 2 -q tests "${MARK[@]}" "$@"
echo "[test] total $(( $(date +%s) - start )) s"
