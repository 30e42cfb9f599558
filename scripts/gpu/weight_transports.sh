#!/usr/bin/env bash
# Weights at GPU speed (issue 15), run by the device tool after ../shared/device/'s unpack preamble (vLLM 0.26 and
# the site packages on PYTHONPATH). Each stage fits one device command (< 10 minutes) and writes log.txt and its
# JSON under $OUT; the model is a random one of Qwen2.5-0.5B's shape (scripts/gpu/make_random_model.py), bf16.
#   test        scripts/gpu/test_cuda_ipc.py: the cuda_ipc transport into a real engine (outputs change with new
#               weights and come back with the old; refusals; seconds per update)
#   bench       scripts/bench/weight_sync.py --gpu: store, disk and cuda_ipc (or TRANSPORTS=a,b) from a DeepSpeed rank (ZeRO-2 and
#               ZeRO-3) into a generating rollout worker on the same GPU, each beside a raw transfer of its bytes
#   loop LIST   scripts/bench/sync_vs_async.py: the full loop with cuda_ipc, rollout worker and trainer rank sharing
#               the GPU; LIST is its --settings (e.g. 0:keep,2:keep), phases and GPU memory per process
set -u
OUT=${OUT:-/tmp/slipstream-gpu}
mkdir -p "$OUT"
step() { echo "== $1"; shift; "$@" > >(tee -a "$OUT/log.txt") 2>&1; echo "== exit $?" | tee -a "$OUT/log.txt"; }
MODEL=/tmp/qwen2-0.5b-random
[ -f $MODEL/config.json ] || step model python scripts/gpu/make_random_model.py --out $MODEL
stage=${1:-test}
if [ "$stage" = test ]; then
  step test timeout 400 python scripts/gpu/test_cuda_ipc.py --model $MODEL --out "$OUT/cuda_ipc_test_h200.json"
elif [ "$stage" = bench ]; then
  step bench timeout 570 python scripts/bench/weight_sync.py --gpu --model $MODEL --dtype bfloat16 \
    --max-new-tokens 256 --max-model-len 320 --transports ${TRANSPORTS:-store,disk,cuda_ipc} --zero-stages 2,3 --updates 5 \
    --out "$OUT/weight_sync_0.5b_h200.json"
elif [ "$stage" = loop ]; then
  step loop timeout 570 python scripts/bench/sync_vs_async.py --gpu --preset cpu_demo --model $MODEL \
    --steps "${STEPS:-30}" --skip 5 --settings "$2" --out "$OUT/sync_vs_async_cuda_ipc_0.5b_${3:-a}.json" \
    --runs-dir /tmp/sync_vs_async \
    rollout.gpus_per_worker=0.5 rollout.gpu_memory_utilization=0.35 rollout.dtype=bfloat16 \
    rollout.max_new_tokens=512 rollout.max_model_len=576 rollout.groups_in_flight=32 rollout.cpus_per_worker=4 \
    trainer.gpus_per_rank=0.5 trainer.dtype=bfloat16 trainer.micro_batches=8 trainer.weight_transport=cuda_ipc \
    buffer.groups_per_step=16 task.held_out_size=64 run.eval_samples=0 run.eval_max_new_tokens=8
fi
