#!/usr/bin/env python3
"""Trainer step time: pi_prox from the gradient pass (trainer.prox_forward=grad_pass, the default) vs a separate
no-grad forward before the step (separate). Same model, same batches, one TrainerRank per mode in its own
process (DeepSpeed's process group is per process), one after the other.

    python scripts/bench/prox_forward.py [--model .cache/tiny-model] [--steps 30] [--groups 32] [--group-size 8]
Writes docs/bench/prox_forward.json (or --out).
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from two_sided import report_side, run_side, write_result  # noqa: E402  (scripts/bench, beside this file)


def batches(args, vocab: int) -> list[list[bytes]]:
    """Random-token groups shaped like the demo's (prompt 6-8 tokens, responses 1-6), fixed by the seed."""
    from buffer.api import Group, Sample, encode_group

    rng = np.random.default_rng(args.seed)
    out = []
    for _ in range(args.steps + args.warmup):
        step = []
        for g in range(args.groups):
            prompt = rng.integers(1, vocab, size=int(rng.integers(6, 9))).astype(np.int32)
            samples = []
            for _ in range(args.group_size):
                resp = rng.integers(1, vocab, size=int(rng.integers(1, args.max_response + 1))).astype(np.int32)
                samples.append(Sample(prompt, resp, rng.uniform(-3, -0.1, len(resp)).astype(np.float32),
                                      np.zeros(len(resp), np.int32), float(rng.integers(0, 2)), "stop"))
            step.append(encode_group(Group(f"p{g}", "", samples)))
        out.append(step)
    return out


def one_mode(args) -> dict:
    import torch

    from trainer.api import TrainerConfig, TrainerRank, make_policy_loss

    torch.set_num_threads(args.threads)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = TrainerConfig(lr=2e-4, micro_batches=args.micro_batches, zero_stage=2, prox_forward=args.only,
                        grad_norm_estimate=args.grad_norm_estimate, cpus_per_rank=args.threads, dtype=args.dtype,
                        gpus_per_rank=1.0 if args.gpu else 0.0)
    rank = TrainerRank(0, 1, "127.0.0.1", port, os.path.abspath(args.model), cfg, seed=args.seed)
    seconds, tokens = [], 0
    for i, step in enumerate(batches(args, rank.engine.module.config.vocab_size)):
        t0 = time.perf_counter()
        result = rank.train_batch(step, make_policy_loss(cfg.loss))
        if args.gpu:
            torch.cuda.synchronize()
        if i >= args.warmup:
            seconds.append(time.perf_counter() - t0)
            tokens += result.tokens
    return {"step_s_median": round(statistics.median(seconds), 4), "step_s_mean": round(statistics.mean(seconds), 4),
            "tokens_per_s": round(tokens / sum(seconds), 1), "steps": len(seconds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, ".cache", "tiny-model"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--groups", type=int, default=32)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-response", type=int, default=6)
    ap.add_argument("--micro-batches", type=int, default=1)
    ap.add_argument("--grad-norm-estimate", default="none")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--gpu", action="store_true", help="the trainer rank on GPU 0 (NCCL process group)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "prox_forward.json"))
    ap.add_argument("--only", choices=("grad_pass", "separate"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        report_side(one_mode(args))
        return
    results = {mode: run_side(__file__, mode) for mode in ("separate", "grad_pass")}
    write_result(args.out, args, args.gpu, **results,
                 speedup=round(results["separate"]["step_s_median"] / results["grad_pass"]["step_s_median"], 3))


if __name__ == "__main__":
    main()
