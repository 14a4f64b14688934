#!/usr/bin/env bash
# Run the whole test suite: notebooks exported and in sync, ruff, pytest, nbdev_test.
set -euo pipefail
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
python -m pytest -n 2 -q tests "$@"
echo "[test] total $(( $(date +%s) - start )) s"
