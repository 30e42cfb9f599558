#!/usr/bin/env bash
# Submit a Slipstream run to a running Ray cluster as a Ray job (docs/cluster.md).
#
#   RAY_ADDRESS=http://<head>:8265 scripts/cluster/submit.sh +experiment=cpu_demo [key=value ...]
#   scripts/cluster/submit.sh --dry-run +experiment=cpu_demo     # print the command, submit nothing
#
# The job's entry point is the `slipstream` console command (pyproject [project.scripts]); the checkout is the
# job's working directory (uploaded to every node, first on PYTHONPATH), scripts/cluster/runtime_env.yaml its
# runtime environment (SLIPSTREAM_RUNTIME_ENV picks another). The driver runs on the head and joins the cluster
# (run.ray_address=auto). Extra `ray job submit` options go in SLIPSTREAM_SUBMIT_ARGS (e.g. "--no-wait").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY_RUN=1
    shift
fi
ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
RUNTIME_ENV="${SLIPSTREAM_RUNTIME_ENV:-$ROOT/scripts/cluster/runtime_env.yaml}"
# shellcheck disable=SC2206  # word splitting of the extra options is intended
EXTRA=(${SLIPSTREAM_SUBMIT_ARGS:-})

CMD=(ray job submit --address "$ADDRESS" --working-dir "$ROOT" --runtime-env "$RUNTIME_ENV" "${EXTRA[@]}"
     -- slipstream run.ray_address=auto "$@")
if (( DRY_RUN )); then
    printf '%q ' "${CMD[@]}"
    echo
    exit 0
fi
command -v ray >/dev/null || { echo "submit.sh: no 'ray' on PATH: activate the environment of scripts/setup.sh" >&2; exit 2; }
exec "${CMD[@]}"
