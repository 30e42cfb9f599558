#!/usr/bin/env bash
# Continuous generation on one GPU (issue 14), run by the device tool after ../shared/device/'s unpack preamble
# (vLLM 0.26 and the site packages on PYTHONPATH). Each stage fits one device command (< 10 minutes) and writes
# log.txt and its JSON under $OUT:
#   bench            the rollout worker vs the bare AsyncLLM engine, random model of Qwen2.5-0.5B's shape
#                    (scripts/gpu/make_random_model.py), <= 512 new tokens (EOS about once per 96 tokens: long-tailed)
#   bench_interleaved the same, both sides up at once and let through in turn (--interleaved: adjacent windows)
#   sync_async LIST  scripts/bench/sync_vs_async.py on that model, rollout worker and trainer rank sharing the GPU
#                    (0.35 / 0.5 of it); LIST is its --settings, e.g. 0:keep,2:keep,2:abort
set -u
OUT=${OUT:-/tmp/slipstream-gpu}
mkdir -p "$OUT"
step() { echo "== $1"; shift; "$@" > >(tee -a "$OUT/log.txt") 2>&1; echo "== exit $?" | tee -a "$OUT/log.txt"; }
MODEL=/tmp/qwen2-0.5b-random
[ -f $MODEL/config.json ] || step model python scripts/gpu/make_random_model.py --out $MODEL
stage=${1:-bench}
if [ "$stage" = bench ]; then
  step bench timeout 560 python scripts/bench/rollout_vs_engine.py --gpu --cpus 4 --model $MODEL \
    --max-new-tokens 512 --max-model-len 576 --groups-in-flight 64 --seconds 45 --warmup-seconds 15 \
    --gpu-memory-utilization 0.4 --dtype bfloat16 --out "$OUT/rollout_vs_engine_0.5b.json"
elif [ "$stage" = bench_interleaved ]; then
  step bench timeout 560 python scripts/bench/rollout_vs_engine.py --gpu --cpus 4 --model $MODEL \
    --max-new-tokens 512 --max-model-len 576 --groups-in-flight 64 --seconds 15 --warmup-seconds 10 --rounds ${ROUNDS:-4} \
    --interleaved --gpu-memory-utilization 0.4 --dtype bfloat16 --out "$OUT/rollout_vs_engine_0.5b_interleaved.json"
elif [ "$stage" = sync_async ]; then
  step sync_async timeout 570 python scripts/bench/sync_vs_async.py --gpu --preset cpu_demo --model $MODEL \
    --steps "${STEPS:-30}" --skip 5 --settings "$2" --out "$OUT/sync_vs_async_0.5b_${3:-a}.json" \
    --runs-dir /tmp/sync_vs_async \
    rollout.gpus_per_worker=0.5 rollout.gpu_memory_utilization=0.35 rollout.dtype=bfloat16 \
    rollout.max_new_tokens=512 rollout.max_model_len=576 rollout.groups_in_flight=32 rollout.cpus_per_worker=4 \
    trainer.gpus_per_rank=0.5 trainer.dtype=bfloat16 trainer.micro_batches=8 buffer.groups_per_step=16 task.held_out_size=64 \
    run.eval_samples=0 run.eval_max_new_tokens=8
fi
