#!/usr/bin/env bash
# The CPU demo, from nothing: install (once), build the tiny model (once), run the job on embedded defaults
# (local Ray, an embedded Redis-compatible server, the tiny model). Extra arguments are Hydra overrides:
#   bash scripts/demo.sh buffer.eta=0 run.total_steps=200
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
.venv/bin/python scripts/build_tiny_model.py --out .cache/tiny-model
exec .venv/bin/python scripts/train.py +experiment=cpu_demo "$@"
