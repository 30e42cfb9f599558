#!/usr/bin/env bash
# The GPU path, end to end, on a lent GPU machine (run by the device tool; see docs/benchmarks.md "GPU").
# Expects vLLM 0.26 and the site packages unpacked and on PYTHONPATH (../shared/device/README.md), the tiny
# model in .cache/tiny-model (carried), and $OUT (at most 8 files come back: log.txt, e2e_*, rollout_vs_engine.json). Each step logs to $OUT and the next one runs even if it fails.
#   1. versions, and whether vLLM's GPU model runner has reload_weights (how our worker loads new weights)
#   2. scripts/train.py, the CPU demo's settings on one GPU: rollout worker and trainer rank share it,
#      vLLM bf16, DeepSpeed ZeRO-2 bf16 with the float32 LM head, weights through the Ray object store
#   3. scripts/bench/rollout_vs_engine.py --gpu on the same model
#   4. (stage scale_rollout) the same bench on a random model of Qwen2.5-0.5B's shape, 256 new tokens
#   5. (stage scale_trainer) scripts/bench/prox_forward.py --gpu: trainer step time, bf16, that model
set -u
OUT=${OUT:-/tmp/slipstream-gpu}
mkdir -p "$OUT"
step() { echo "== $1"; shift; "$@" > >(tee -a "$OUT/log.txt") 2>&1; echo "== exit $?" | tee -a "$OUT/log.txt"; }

stage=${1:-all}  # all (1-3) | e2e (1-2) | bench (3) | scale_rollout (4) | scale_trainer (5): a device command
                # must end within 10 minutes
MODEL=/tmp/qwen2-0.5b-random
if [ "$stage" = scale_rollout ] || [ "$stage" = scale_trainer ]; then
  [ -f $MODEL/config.json ] || step model python scripts/gpu/make_random_model.py --out $MODEL
  [ "$stage" = scale_rollout ] && step scale_rollout timeout 420 python scripts/bench/rollout_vs_engine.py --gpu --cpus 4 \
    --model $MODEL --max-new-tokens 256 --max-model-len 320 --groups-in-flight 64 --seconds 45 \
    --gpu-memory-utilization 0.4 --dtype bfloat16 --out "$OUT/rollout_vs_engine_0.5b.json"
  [ "$stage" = scale_trainer ] && step scale_trainer timeout 300 python scripts/bench/prox_forward.py --gpu \
    --dtype bfloat16 --model $MODEL --groups 32 --group-size 8 --max-response 256 --steps 20 --micro-batches 8 \
    --out "$OUT/prox_forward_0.5b.json"
  exit 0
fi
if [ "$stage" != bench ]; then
step versions python - <<'PY'
import torch, vllm, deepspeed, ray
print("torch", torch.__version__, "vllm", vllm.__version__, "deepspeed", deepspeed.__version__, "ray", ray.__version__)
print(torch.cuda.get_device_name(0), torch.cuda.device_count(), "GPU(s)")
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
print("GPUModelRunner.reload_weights:", hasattr(GPUModelRunner, "reload_weights"))
PY
step e2e timeout 330 python scripts/train.py +experiment=cpu_demo run.max_minutes=2.5 run.tensorboard=false \
  rollout.enforce_eager=true rollout.gpus_per_worker=0.5 rollout.gpu_memory_utilization=0.3 rollout.dtype=bfloat16 \
  trainer.gpus_per_rank=0.5 trainer.dtype=bfloat16 hydra.run.dir=/tmp/e2e
cp /tmp/e2e/metrics.jsonl "$OUT/e2e_metrics.jsonl"; cp /tmp/e2e/summary.json "$OUT/e2e_summary.json"
fi
[ "$stage" = e2e ] || step bench timeout 300 python scripts/bench/rollout_vs_engine.py --gpu --cpus 4 --seconds 30 --gpu-memory-utilization 0.3 \
  --dtype bfloat16 --out "$OUT/rollout_vs_engine.json"
