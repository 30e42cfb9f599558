#!/usr/bin/env python3
"""Rollout worker vs the bare engine: generated tokens per second on the same model, prompts and settings.

bare:   vLLM's AsyncLLM alone in a process, built with the rollout engine's own arguments
        (rollout.engine.engine_args), kept full the way a bare user would: --groups-in-flight prompts in flight,
        each `generate(prompt, n=group_size)` (final output only, no detokenizing), the next prompt submitted the
        moment one finishes; nothing else.
worker: the real `RolloutWorker` Ray actor (admission guard, prompt drawing, sampling plan, per-sample requests
        with per-token versions, reward scoring, Redis pushes) feeding a real embedded Redis, with this process
        popping and committing batches as fast as they come (a trainer that costs nothing), so only the worker's
        own overhead shows.
Both count the response tokens of the groups that finish inside the same wall-clock window, after a warm-up,
with the same CPU threads (OMP_NUM_THREADS = --cpus on both sides).

    python scripts/bench/rollout_vs_engine.py [--model .cache/tiny-model] [--seconds 60] [--gpu]
Writes docs/bench/rollout_vs_engine.json (or --out).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from two_sided import Drainer, processes_named, report_side, run_side, write_result  # scripts/bench, beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rollout_config(args):
    from rollout.config import RolloutConfig

    return RolloutConfig(group_size=args.group_size, groups_in_flight=args.groups_in_flight,
                         max_new_tokens=args.max_new_tokens, max_model_len=args.max_model_len, dtype=args.dtype,
                         gpus_per_worker=1.0 if args.gpu else 0.0, cpus_per_worker=args.cpus,
                         gpu_memory_utilization=args.gpu_memory_utilization, max_num_seqs=args.max_num_seqs,
                         enforce_eager=not args.gpu)


def prompt_source(args):
    from rollout.api import DataConfig, SourceContext, TaskConfig
    from rollout.tasks.addition import addition_source

    return addition_source(DataConfig(), TaskConfig(max_operands=args.max_operands), SourceContext(seed=args.seed))


def bare_engine(args) -> dict:
    """Tokens/s of AsyncLLM alone, with the worker's prompts, engine arguments and sampling settings."""
    # the same threads as the worker actor gets: Ray sets OMP_NUM_THREADS to the actor's CPUs, and the worker
    # keeps it (a first run without this compared 1 thread in the actor with 16 in this process on the GPU host)
    os.environ["OMP_NUM_THREADS"] = str(int(args.cpus))
    if not args.gpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    return asyncio.run(_bare(args))


async def _bare(args) -> dict:
    from transformers import AutoTokenizer
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    from rollout.engine import engine_args

    cfg, model = rollout_config(args), os.path.abspath(args.model)
    llm = AsyncLLM.from_engine_args(engine_args(
        model, max_model_len=cfg.max_model_len, seed=args.seed, dtype=cfg.dtype, max_num_seqs=cfg.max_num_seqs,
        gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager,
        tensor_parallel_size=1, on_cpu=not args.gpu))
    tokenizer, source = AutoTokenizer.from_pretrained(model), prompt_source(args)
    params = SamplingParams(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p, logprobs=0,
                            max_tokens=cfg.max_new_tokens, detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY)
    window = {"start": None, "end": None, "tokens": 0, "groups": 0}
    ids = iter(range(10**9))

    async def keep_one_in_flight(stop_at: float) -> None:
        while time.perf_counter() < stop_at:
            prompt = TokensPrompt(prompt_token_ids=tokenizer.encode(source.next(1)[0].text, add_special_tokens=False))
            async for out in llm.generate(prompt, params, request_id=f"b{next(ids)}"):
                final = out
            now = time.perf_counter()
            if window["start"] is not None and window["start"] <= now <= window["end"]:
                window["tokens"] += sum(len(c.token_ids) for c in final.outputs)
                window["groups"] += 1

    t0 = time.perf_counter()
    warm_end = t0 + args.warmup_seconds
    window["start"], window["end"] = warm_end, warm_end + args.seconds
    cpu = asyncio.ensure_future(cpu_seconds_between(os.getpid(), warm_end, window["end"]))
    await asyncio.gather(*(keep_one_in_flight(window["end"]) for _ in range(cfg.groups_in_flight)))
    llm.shutdown()
    return {"tokens": window["tokens"], "groups": window["groups"], "seconds": args.seconds,
            "tokens_per_s": round(window["tokens"] / args.seconds, 1),
            "client_cpu_ms_per_group": round(1000 * await cpu / max(window["groups"], 1), 3)}


async def cpu_seconds_between(pid: int, start: float, end: float) -> float:
    """CPU seconds process `pid` (its threads, not its children) spends between two perf_counter times."""
    import psutil

    proc = psutil.Process(pid)
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    before = sum(proc.cpu_times()[:2])
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    return sum(proc.cpu_times()[:2]) - before


def actor_process(name: str = "ray::RolloutActor"):
    return processes_named((name,))[0]


RAY_DAEMONS = ("raylet", "gcs_server", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "monitor.py", "log_monitor.py",
               "dashboard.py", "ray::IDLE")


def cpu_of(procs: dict) -> dict:
    """CPU seconds (user + system) of each named list of processes; a process gone meanwhile counts 0."""
    out = {}
    for name, group in procs.items():
        total = 0.0
        for p in group:
            try:
                total += sum(p.cpu_times()[:2])
            except Exception:  # noqa: BLE001 - exited
                pass
        out[name] = total
    return out


def rollout_worker(args) -> dict:
    """Tokens/s of the real RolloutWorker actor into a real Redis, drained by a free consumer."""
    import psutil
    import ray

    from buffer.api import BufferConfig, EmbeddedRedis, connect
    from rewards import RewardConfig
    from rollout.api import DataConfig, RolloutActor, TaskConfig

    cfg = rollout_config(args)
    groups_per_step = cfg.groups_in_flight
    # Staleness never binds: this measures generation, not the admission guard's waiting.
    buf_cfg = BufferConfig(eta=10**6, groups_per_step=groups_per_step, max_in_flight=4 * cfg.groups_in_flight,
                           max_buffered=16 * cfg.groups_in_flight)
    with EmbeddedRedis() as server:
        from launcher.main import LOCAL_RAY_SYSTEM_CONFIG  # the Ray the job itself starts

        ray.init(address="local", include_dashboard=False, log_to_driver=False, num_cpus=max(os.cpu_count() or 1, 2),
                 _system_config=LOCAL_RAY_SYSTEM_CONFIG)
        try:
            buffer = connect(server.url, "bench", buf_cfg)
            buffer.initialize(version=0)
            actor = ray.remote(RolloutActor).options(num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker,
                                                      max_concurrency=4)
            worker = actor.remote(0, os.path.abspath(args.model), cfg, DataConfig(),
                                  TaskConfig(max_operands=args.max_operands),
                                  buf_cfg, RewardConfig(), server.url, "bench", args.seed)
            ray.get(worker.__ray_ready__.remote())  # engine started
            drainer = Drainer(buffer, groups_per_step)
            run = worker.run.remote()
            while buffer.stats()["gen_tokens"] == 0:  # the engine is up: the first group has landed
                time.sleep(0.05)
            time.sleep(args.warmup_seconds)
            # the CPU the worker's side spends besides the engine core: the actor, the Redis server, this process
            # (the drainer standing in for the trainer), Ray's daemons
            procs = {"actor": [actor_process()], "redis": [psutil.Process(server.proc.pid)], "drainer": [psutil.Process()],
                     "ray_daemons": processes_named(RAY_DAEMONS)}
            start_tokens, t0, cpu0 = buffer.stats()["gen_tokens"], time.perf_counter(), cpu_of(procs)
            start_groups = buffer.stats()["pushed"]
            time.sleep(args.seconds)
            tokens, seconds = buffer.stats()["gen_tokens"] - start_tokens, time.perf_counter() - t0
            cpu_by = {k: v - cpu0[k] for k, v in cpu_of(procs).items()}
            cpu, groups = cpu_by["actor"], buffer.stats()["pushed"] - start_groups
            ray.get(worker.stop.remote())
            counters = ray.get(run)
            drainer.stop()
        finally:
            ray.shutdown()
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "groups": groups, "client_cpu_ms_per_group": round(1000 * cpu / max(groups, 1), 3),
            "side_cpu_ms_per_group": {k: round(1000 * v / max(groups, 1), 3) for k, v in cpu_by.items()},
            "worker_counters": {k: counters[k] for k in ("groups", "samples", "tokens", "gen_seconds",
                                                         "engine_idle_s")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, ".cache", "tiny-model"))
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--groups-in-flight", type=int, default=48, help="groups each side keeps in the engine")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--warmup-seconds", type=float, default=10.0)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--max-model-len", type=int, default=64)
    ap.add_argument("--max-operands", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--gpu", action="store_true", help="engine on one GPU (both runs)")
    ap.add_argument("--cpus", type=float, default=1.0, help="CPUs of the worker actor; the bare side gets as many "
                    "threads")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=1, help="bare then worker, this many times; the median ratio")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "rollout_vs_engine.json"))
    ap.add_argument("--only", choices=("bare", "worker"), help=argparse.SUPPRESS)  # one side, in a child process
    args = ap.parse_args()
    if args.only:
        report_side((bare_engine if args.only == "bare" else rollout_worker)(args))
        return
    # sides alternate, --rounds times: on a shared machine the load drifts between one window and the next
    rounds = [{side: run_side(__file__, side) for side in ("bare", "worker")} for _ in range(args.rounds)]
    ratios = sorted(r["worker"]["tokens_per_s"] / r["bare"]["tokens_per_s"] for r in rounds)
    write_result(args.out, args, args.gpu, bare_engine=rounds[-1]["bare"], rollout_worker=rounds[-1]["worker"],
                 rounds=rounds, ratios=[round(x, 3) for x in ratios],
                 worker_over_bare=round(statistics.median(ratios), 3), worker_over_bare_worst=round(ratios[0], 3))


if __name__ == "__main__":
    main()
