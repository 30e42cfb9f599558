#!/usr/bin/env python3
"""Rollout worker vs the bare engine: generated tokens per second on the same model, prompts and settings.

bare:   one `VllmEngine` in this process, calling `generate(prompts, n=group_size)` back to back; nothing else.
worker: the real `RolloutWorker` Ray actor (admission guard, prompt drawing, sampling plan, reward scoring,
        encoding, Redis pushes) feeding a real embedded Redis, with this process popping and committing
        batches as fast as they come (a trainer that costs nothing), so only the worker's own overhead shows.
Both count response tokens only, after one warm-up call, over the same wall-clock window.

    python scripts/bench/rollout_vs_engine.py [--model .cache/tiny-model] [--seconds 60] [--gpu]
Writes docs/bench/rollout_vs_engine.json (or --out).
"""
from __future__ import annotations

import argparse
import os
import threading
import time

from two_sided import report_side, run_side, write_result  # scripts/bench, beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rollout_config(args):
    from rollout.config import RolloutConfig

    return RolloutConfig(group_size=args.group_size, groups_per_call=args.groups_per_call,
                         max_new_tokens=args.max_new_tokens, max_model_len=args.max_model_len, dtype=args.dtype,
                         gpus_per_worker=1.0 if args.gpu else 0.0, cpus_per_worker=args.cpus,
                         gpu_memory_utilization=args.gpu_memory_utilization)


def bare_engine(args) -> dict:
    """Tokens/s of the engine alone, with the worker's prompts and sampling settings."""
    # the same threads as the worker actor gets: Ray sets OMP_NUM_THREADS to the actor's CPUs, and the worker
    # keeps it (a first run without this compared 1 thread in the actor with 16 in this process on the GPU host)
    os.environ["OMP_NUM_THREADS"] = str(int(args.cpus))
    if not args.gpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    from rollout.engine import VllmEngine
    from rollout.tasks.addition import AdditionTask

    cfg = rollout_config(args)
    engine = VllmEngine(os.path.abspath(args.model), max_model_len=cfg.max_model_len, seed=args.seed,
                        dtype=cfg.dtype, gpu_memory_utilization=cfg.gpu_memory_utilization,
                        enforce_eager=not args.gpu)
    task = AdditionTask(seed=args.seed, max_operands=args.max_operands)

    def call() -> int:
        ids = [engine.encode(p.text) for p in task.next(cfg.groups_per_call)]
        outs = engine.generate(ids, n=cfg.group_size, max_new_tokens=cfg.max_new_tokens,
                               temperature=cfg.temperature, top_p=cfg.top_p)
        return sum(len(c.token_ids) for group in outs for c in group)

    call()  # warm-up
    tokens, calls, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        tokens += call()
        calls += 1
    seconds = time.perf_counter() - t0
    return {"tokens": tokens, "seconds": round(seconds, 2), "calls": calls, "tokens_per_s": round(tokens / seconds, 1)}


def rollout_worker(args) -> dict:
    """Tokens/s of the real RolloutWorker actor into a real Redis, drained by a free consumer."""
    import ray

    from buffer.api import BufferConfig, EmbeddedRedis, connect
    from rewards import RewardConfig
    from rollout.api import DataConfig, RolloutActor, TaskConfig

    cfg = rollout_config(args)
    groups_per_step = cfg.groups_per_call
    # Staleness never binds: this measures generation, not the admission guard's waiting.
    buf_cfg = BufferConfig(eta=10**6, groups_per_step=groups_per_step, max_in_flight=4 * cfg.groups_per_call,
                           max_buffered=16 * cfg.groups_per_call)
    with EmbeddedRedis() as server:
        ray.init(address="local", include_dashboard=False, log_to_driver=False, num_cpus=max(os.cpu_count() or 1, 2))
        try:
            buffer = connect(server.url, "bench", buf_cfg)
            buffer.initialize(version=0)
            actor = ray.remote(RolloutActor).options(num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker,
                                                      max_concurrency=4)
            worker = actor.remote(0, os.path.abspath(args.model), cfg, DataConfig(),
                                  TaskConfig(max_operands=args.max_operands),
                                  buf_cfg, RewardConfig(), server.url, "bench", args.seed)
            ray.get(worker.__ray_ready__.remote())  # engine started
            stop = threading.Event()

            def drain() -> None:
                while not stop.is_set():
                    batch = buffer.pop(groups_per_step, timeout_s=1.0)
                    if batch is not None:
                        buffer.commit(batch)

            drainer = threading.Thread(target=drain, daemon=True)
            drainer.start()
            run = worker.run.remote()
            while buffer.stats()["gen_tokens"] == 0:  # warm-up: the first call has landed
                time.sleep(0.05)
            start_tokens, t0 = buffer.stats()["gen_tokens"], time.perf_counter()
            time.sleep(args.seconds)
            tokens, seconds = buffer.stats()["gen_tokens"] - start_tokens, time.perf_counter() - t0
            ray.get(worker.stop.remote())
            counters = ray.get(run)
            stop.set()
            drainer.join()
        finally:
            ray.shutdown()
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "worker_counters": {k: counters[k] for k in ("groups", "samples", "tokens", "gen_seconds")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, ".cache", "tiny-model"))
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--groups-per-call", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--max-model-len", type=int, default=64)
    ap.add_argument("--max-operands", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--gpu", action="store_true", help="engine on one GPU (both runs)")
    ap.add_argument("--cpus", type=float, default=2.0, help="CPUs of the worker actor; the bare side gets as many "
                    "threads")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "rollout_vs_engine.json"))
    ap.add_argument("--only", choices=("bare", "worker"), help=argparse.SUPPRESS)  # one side, in a child process
    args = ap.parse_args()
    if args.only:
        report_side((bare_engine if args.only == "bare" else rollout_worker)(args))
        return
    bare, worker = (run_side(__file__, side) for side in ("bare", "worker"))
    write_result(args.out, args, args.gpu, bare_engine=bare, rollout_worker=worker,
                 worker_over_bare=round(worker["tokens_per_s"] / bare["tokens_per_s"], 3))


if __name__ == "__main__":
    main()
