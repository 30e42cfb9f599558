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
Both count the response tokens of the groups that finish inside a wall-clock window, with the same CPU threads
(OMP_NUM_THREADS = --cpus on both sides), and both settle their heap once the engine is up (rollout.actor.settle_heap:
the garbage collector tuned as the worker actor tunes it; --bare-heap default leaves the bare side's untouched).

Two ways to pair the windows (each side runs in a child process of its own):
- one after the other (the default): per round, a fresh bare side (start, --warmup-seconds, a window), then a fresh
  worker side; the rounds alternate. On a shared VM the load drifts between two windows a minute apart by more than
  the difference measured (one round's ratio moved by 0.3).
- --interleaved: both sides start once and are held; in turn each is let through for a window of --seconds after
  --ramp-seconds, then held until idle (bare: its feeders stop submitting; worker: its consumer stops, the buffer
  fills and the admission guard holds the worker back, as a trainer that stops consuming would), so the two
  windows of a round are seconds apart; the order alternates (bare-worker, worker-bare, ...). A held side still
  costs a little (the worker: Ray's daemons, its guard polls; both: an idle engine core): `held_cpu_cores`.

    python scripts/bench/rollout_vs_engine.py [--model .cache/tiny-model] [--seconds 60] [--gpu] [--interleaved]
        [--engine-cpus 0]   # both sides' engine cores on CPU 0, their other threads on the rest (rollout.engine_cpus)
    # long-tailed answers on CPU, as on the GPU: a random model of the tiny shape (scripts/gpu/make_random_model.py)
    python scripts/bench/rollout_vs_engine.py --model .cache/random-tiny --max-new-tokens 256 --max-model-len 288 \
        --interleaved --seconds 20 --rounds 6 --warmup-seconds 10 --ramp-seconds 10 --cpus 1
Writes docs/bench/rollout_vs_engine.json (or --out).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import threading
import time

import psutil
from two_sided import (CpuMeter, Drainer, held_cores, interleave, processes_named, report_side, run_side,  # scripts/bench
                       serve, write_result)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rollout_config(args):
    from rollout.config import RolloutConfig

    return RolloutConfig(group_size=args.group_size, groups_in_flight=args.groups_in_flight,
                         max_new_tokens=args.max_new_tokens, max_model_len=args.max_model_len, dtype=args.dtype,
                         gpus_per_worker=1.0 if args.gpu else 0.0, cpus_per_worker=args.cpus,
                         gpu_memory_utilization=args.gpu_memory_utilization, max_num_seqs=args.max_num_seqs,
                         enforce_eager=not args.gpu, engine_cpus=args.engine_cpus)


def prompt_source(args):
    from rollout.api import DataConfig, SourceContext, TaskConfig
    from rollout.tasks.addition import addition_source

    return addition_source(DataConfig(), TaskConfig(max_operands=args.max_operands), SourceContext(seed=args.seed))


class BareSide:
    """AsyncLLM alone, with the worker's prompts, engine arguments and sampling settings: --groups-in-flight
    feeders, each submitting the next prompt the moment its last one finishes, while the side is let through."""

    def __init__(self, args):
        # the same threads as the worker actor gets: Ray sets OMP_NUM_THREADS to the actor's CPUs, and the worker
        # keeps it (a first run without this compared 1 thread in the actor with 16 in this process on the GPU host)
        os.environ["OMP_NUM_THREADS"] = str(int(args.cpus))
        if not args.gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        self.args, self.live, self.window_at = args, 0, (float("inf"), float("inf"))
        self.tokens = self.groups = 0
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()
        if args.engine_cpus:  # as the worker's engine pins itself (rollout.engine_cpus)
            from rollout.cpu_pinning import pin_engine_core

            print(pin_engine_core(args.engine_cpus), file=sys.stderr)
        # the worker actor settles its heap once its engine is up (rollout.actor.settle_heap: frozen, fewer young
        # collections); so does this side by default, so that the ratio shows the worker's own work, not Python's
        # collector (--bare-heap default: AsyncLLM as an embedding program gets it, collector untouched)
        if args.bare_heap == "settled":
            from rollout.actor import settle_heap

            settle_heap()
        me = psutil.Process()
        self.cpu = CpuMeter(lambda: {"client": [me], "engine_core": me.children(recursive=True)})
        self.cpu.read()

    async def _start(self) -> None:
        from transformers import AutoTokenizer
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM

        from rollout.engine import engine_args

        args, cfg, model = self.args, rollout_config(self.args), os.path.abspath(self.args.model)
        self.llm = AsyncLLM.from_engine_args(engine_args(
            model, max_model_len=cfg.max_model_len, seed=args.seed, dtype=cfg.dtype, max_num_seqs=cfg.max_num_seqs,
            gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager,
            tensor_parallel_size=1, on_cpu=not args.gpu))
        self.tokenizer, self.source = AutoTokenizer.from_pretrained(model), prompt_source(args)
        self.params = SamplingParams(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p, logprobs=0,
                                     max_tokens=cfg.max_new_tokens, detokenize=False,
                                     output_kind=RequestOutputKind.FINAL_ONLY)
        self.go, self.ids = asyncio.Event(), iter(range(10**9))
        self.feeders = [asyncio.ensure_future(self._feed()) for _ in range(cfg.groups_in_flight)]

    async def _feed(self) -> None:
        from vllm.inputs import TokensPrompt

        while True:
            await self.go.wait()
            prompt = TokensPrompt(prompt_token_ids=self.tokenizer.encode(self.source.next(1)[0].text,
                                                                         add_special_tokens=False))
            self.live += 1
            async for out in self.llm.generate(prompt, self.params, request_id=f"b{next(self.ids)}"):
                final = out
            self.live -= 1
            if self.window_at[0] <= time.perf_counter() <= self.window_at[1]:
                self.tokens += sum(len(c.token_ids) for c in final.outputs)
                self.groups += 1

    def window(self, ramp_s: float, seconds: float) -> dict:
        """Let the feeders through; count the groups that finish in `seconds` after `ramp_s`; hold them again."""
        held = held_cores(self.cpu.read())
        self.loop.call_soon_threadsafe(self.go.set)
        time.sleep(ramp_s)
        self.tokens = self.groups = 0
        self.cpu.read()
        t0 = time.perf_counter()
        self.window_at = (t0, t0 + seconds)
        time.sleep(seconds)
        cpu, tokens, groups = self.cpu.read(), self.tokens, self.groups
        self.loop.call_soon_threadsafe(self.go.clear)
        while self.live:  # the requests in flight finish; no new one starts
            time.sleep(0.05)
        self.cpu.read()
        return {"tokens": tokens, "groups": groups, "seconds": seconds, "tokens_per_s": round(tokens / seconds, 1),
                "client_cpu_ms_per_group": round(1000 * cpu["client"] * cpu["seconds"] / max(groups, 1), 3),
                "cores": cpu, "held_cpu_cores": held}

    def close(self) -> dict:
        for f in self.feeders:
            self.loop.call_soon_threadsafe(f.cancel)
        self.llm.shutdown()
        return {}


RAY_DAEMONS = ("raylet", "gcs_server", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "monitor.py", "log_monitor.py",
               "dashboard.py", "ray::IDLE")


class WorkerSide:
    """The real RolloutWorker Ray actor into a real embedded Redis, drained by a consumer that costs nothing while
    the side is let through; held, the consumer stops, the buffer fills and the admission guard stops the worker
    (what a trainer that stops consuming does)."""

    def __init__(self, args):
        import ray

        from buffer.api import BufferConfig, EmbeddedRedis, connect
        from launcher.main import LOCAL_RAY_SYSTEM_CONFIG  # the Ray the job itself starts
        from rewards import RewardConfig
        from rollout.api import DataConfig, RolloutActor, TaskConfig

        # held, the worker polls the admission guard every idle_sleep_s: 0.1 s (not 0.02) keeps what the held side
        # costs the other side's windows small; a busy worker never sleeps on it
        cfg = dataclasses.replace(rollout_config(args), idle_sleep_s=0.1)
        self.groups_per_step = cfg.groups_in_flight
        # Staleness never binds: this measures generation, not the admission guard's waiting. The buffer holds a
        # few steps, so that a held side stops within a second of its consumer.
        self.buf_cfg = BufferConfig(eta=10**6, groups_per_step=self.groups_per_step,
                                    max_in_flight=4 * cfg.groups_in_flight, max_buffered=4 * cfg.groups_in_flight)
        self.server = EmbeddedRedis().__enter__()
        ray.init(address="local", include_dashboard=False, log_to_driver=False, num_cpus=max(os.cpu_count() or 1, 2),
                 _system_config=LOCAL_RAY_SYSTEM_CONFIG)
        self.buffer = connect(self.server.url, "bench", self.buf_cfg)
        self.buffer.initialize(version=0)
        actor = ray.remote(RolloutActor).options(num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker,
                                                  max_concurrency=4)
        self.worker = actor.remote(0, os.path.abspath(args.model), cfg, DataConfig(),
                                   TaskConfig(max_operands=args.max_operands),
                                   self.buf_cfg, RewardConfig(), self.server.url, "bench", args.seed)
        ray.get(self.worker.__ray_ready__.remote())  # engine started
        self.run = self.worker.run.remote()
        while self.buffer.stats()["gen_tokens"] == 0:  # the engine is up: the first group has landed
            time.sleep(0.05)
        self._wait_idle()
        actor_proc, redis_proc = processes_named(("ray::RolloutActor",))[0], psutil.Process(self.server.proc.pid)
        # the CPU the worker's side spends: the actor, its engine core, the Redis server, this process (the
        # consumer standing in for the trainer), Ray's daemons
        self.cpu = CpuMeter(lambda: {"actor": [actor_proc], "engine_core": actor_proc.children(recursive=True),
                                     "redis": [redis_proc], "drainer": [psutil.Process()],
                                     "ray_daemons": processes_named(RAY_DAEMONS)})
        self.cpu.read()

    def _wait_idle(self, timeout_s: float = 300.0) -> None:
        """Until the worker has no group in flight (the guard holds it back and its last groups have landed: a
        quiet half second is not enough on the GPU, where a long sample runs for seconds between pushes)."""
        deadline = time.monotonic() + timeout_s
        while self.buffer.stats()["running"] > 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the held worker still has groups in flight after {timeout_s:g} s")
            time.sleep(0.1)

    def window(self, ramp_s: float, seconds: float) -> dict:
        held = held_cores(self.cpu.read())
        drainer = Drainer(self.buffer, self.groups_per_step)
        time.sleep(ramp_s)
        self.cpu.read()
        stats0, t0 = self.buffer.stats(), time.perf_counter()
        time.sleep(seconds)
        stats1, elapsed, cpu = self.buffer.stats(), time.perf_counter() - t0, self.cpu.read()
        drainer.stop()
        self._wait_idle()
        self.cpu.read()
        tokens, groups = stats1["gen_tokens"] - stats0["gen_tokens"], stats1["pushed"] - stats0["pushed"]
        per_group = 1000 * cpu["seconds"] / max(groups, 1)  # ms of CPU per finished group, per core used
        return {"tokens": tokens, "seconds": round(elapsed, 2), "tokens_per_s": round(tokens / elapsed, 1),
                "groups": groups, "client_cpu_ms_per_group": round(cpu["actor"] * per_group, 3),
                "side_cpu_ms_per_group": {k: round(v * per_group, 3) for k, v in cpu.items()
                                          if k not in ("engine_core", "seconds", "waiting")},
                "cores": cpu, "held_cpu_cores": held}

    def close(self) -> dict:
        import ray

        try:
            ray.get(self.worker.stop.remote(), timeout=60)
            counters = ray.get(self.run, timeout=120)
        finally:
            ray.shutdown()
            self.server.__exit__(None, None, None)
        return {"worker_counters": {k: counters[k] for k in ("groups", "samples", "tokens", "gen_seconds",
                                                              "engine_idle_s")}}


SIDES = {"bare": BareSide, "worker": WorkerSide}


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
    ap.add_argument("--rounds", type=int, default=1, help="pairs of windows; the median ratio")
    ap.add_argument("--interleaved", action="store_true", help="both sides up at once, let through in turn for "
                    "--seconds each after --ramp-seconds (one start each); else one after the other, a fresh start "
                    "each round")
    ap.add_argument("--bare-heap", choices=("settled", "default"), default="settled", help="the bare side's "
                    "garbage collector: tuned as the worker actor's (rollout.actor.settle_heap), or Python's default")
    ap.add_argument("--engine-cpus", default="", help="CPU ids for the engine core on both sides, each side's other "
                    "threads on the rest (rollout.engine_cpus); default: no pinning")
    ap.add_argument("--ramp-seconds", type=float, default=3.0, help="interleaved: from a side's release to its window")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "rollout_vs_engine.json"))
    ap.add_argument("--only", choices=tuple(SIDES), help=argparse.SUPPRESS)  # one side, in a child process
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # ... that windows on command
    args = ap.parse_args()
    if args.only:
        side = SIDES[args.only](args)
        if args.serve:
            serve(side)
        else:
            report_side({**side.window(args.warmup_seconds, args.seconds), **side.close()})
        return
    if args.interleaved:
        rounds, closed = interleave(__file__, ("bare", "worker"), args.rounds, args.warmup_seconds,
                                    args.ramp_seconds, args.seconds)
        extra = {"closed": closed}
    else:  # sides alternate, --rounds times: on a shared machine the load drifts between one window and the next
        rounds, extra = [{side: run_side(__file__, side) for side in ("bare", "worker")} for _ in range(args.rounds)], {}
    ratios = sorted(r["worker"]["tokens_per_s"] / r["bare"]["tokens_per_s"] for r in rounds)
    total = {s: sum(r[s]["tokens_per_s"] for r in rounds) for s in ("bare", "worker")}
    write_result(args.out, args, args.gpu, bare_engine=rounds[-1]["bare"], rollout_worker=rounds[-1]["worker"],
                 rounds=rounds, ratios=[round(x, 3) for x in ratios],
                 worker_over_bare=round(statistics.median(ratios), 3), worker_over_bare_worst=round(ratios[0], 3),
                 worker_over_bare_pooled=round(total["worker"] / total["bare"], 3), **extra)


if __name__ == "__main__":
    main()
