#!/usr/bin/env bash
# The learning study at a size that is not a toy (issue 15): a 101M-parameter model of the tiny model's family
# (rollout/tasks/addition_model.py SIZES["100m"]) warm-started on the GPU on the long-tailed chain task, then RL
# synchronous (eta = 0) vs asynchronous (eta = 2, keep), rollout worker and trainer rank sharing the one GPU,
# weights through cuda_ipc; held-out success vs training wall-clock (scripts/bench/learning_speed.py). Run by the
# device tool after ../shared/device/'s unpack preamble; each stage fits one device command (< 10 minutes).
#   build   the warm start only (the model stays in .cache/study100m on a warm machine)
#   rl      build if absent, then the two RL runs of MINUTES each; writes learning_100m_h200.json/.png under $OUT
#           (LR, HELD_OUT, EVAL_EVERY: trainer.lr, task.held_out_size, run.eval_every; the defaults are the study's)
set -u
OUT=${OUT:-/tmp/slipstream-gpu}
mkdir -p "$OUT"
SEED=${SEED:-0}
MINUTES=${MINUTES:-2.6}
BUILD="--size 100m --device cuda --max-operands 5 --target-success 0.15"
if [ "${1:-rl}" = build ]; then
  timeout 570 python scripts/build_tiny_model.py --out .cache/study100m/tiny-model-seed$SEED --seed $SEED $BUILD \
    2>&1 | tee -a "$OUT/log.txt"
  cp .cache/study100m/tiny-model-seed$SEED/slipstream_build.json "$OUT/build_100m_seed$SEED.json"
else
  timeout 580 python scripts/bench/learning_speed.py --seeds $SEED --etas 0,2 --minutes $MINUTES \
    --preset staleness_study --build-args "$BUILD" --reuse-models --models-dir .cache/study100m \
    --machine "1 H200 (device tool), rollout worker and trainer rank sharing it" \
    --runs-dir /tmp/study100m --out "$OUT/learning_100m_h200.json" \
    rollout.gpus_per_worker=0.5 rollout.gpu_memory_utilization=0.3 rollout.dtype=bfloat16 rollout.cpus_per_worker=4 \
    trainer.gpus_per_rank=0.5 trainer.dtype=bfloat16 trainer.weight_transport=cuda_ipc trainer.lr=${LR:-1e-5} task.held_out_size=${HELD_OUT:-400} run.eval_every=${EVAL_EVERY:-20} \
    2>&1 | tee -a "$OUT/log.txt"
fi
