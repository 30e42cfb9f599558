#!/usr/bin/env bash
# Install (once) and run the tests. Extra arguments go to pytest:
#   bash scripts/test.sh -m "not slow"     # the quick subset (no whole-run end-to-end tests)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
