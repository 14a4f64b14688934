#!/usr/bin/env bash
# Build the book: execute every library notebook and every chapter (smoke profile, embedded simulator),
# then a strict Jupyter Book HTML build (-W: any warning fails). Output: _build/html/index.html
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
nbdev_export
fusionbook book "$@"
