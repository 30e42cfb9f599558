"""The job driver: wires buffer, rollout workers and trainer ranks, and runs the training loop.

Reads top to bottom: start Redis and Ray, start the parts, evaluate, then per step
  wait for a batch -> train -> send weights -> bump version -> commit the batch -> log,
each phase timed under its name. Generation never appears here: rollout workers loop on their own and
are held back only by the buffer's admission guard.

Invariant: whatever happens (error, Ctrl-C, SIGTERM), everything started here is stopped, in reverse order.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
import uuid

from buffer.prompt_stats import PromptStats
from buffer.redis_buffer import METRIC_COUNTERS, PoppedBatch, RedisBuffer
from launcher.config import SlipstreamConfig, validate
from launcher.metrics import MetricsWriter, pass_rate_histogram

log = logging.getLogger("slipstream")


def run(cfg: SlipstreamConfig, run_dir: str) -> dict:
    """Run one job; returns the summary (also written to <run_dir>/summary.json)."""
    validate(cfg)
    os.makedirs(run_dir, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGTERM unwinds like Ctrl-C
    with contextlib.ExitStack() as cleanup:
        redis_url = cfg.buffer.redis_url or _start_embedded_redis(cleanup)
        _start_ray(cfg, cleanup)
        prefix = cfg.buffer.key_prefix or f"slipstream:{cfg.run.name}:{uuid.uuid4().hex[:8]}"
        buffer = RedisBuffer(redis_url, prefix=prefix, eta=cfg.buffer.eta,
                             groups_per_step=cfg.trainer.groups_per_step, max_in_flight=cfg.buffer.max_in_flight,
                             max_buffered=cfg.buffer.max_buffered, claim_idle_s=cfg.buffer.claim_idle_s)
        cleanup.callback(buffer.close)
        buffer.initialize(version=0)
        workers = _start_workers(cfg, redis_url, prefix, cleanup)
        trainers = _start_trainers(cfg, cleanup)
        import ray

        ray.get(trainers[0].set_transport.remote(cfg.trainer.weight_transport, workers))
        try:
            return _train(cfg, buffer, workers, trainers, run_dir)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping rollout workers, trainers, Ray and Redis", flush=True)
            raise


def _start_embedded_redis(cleanup: contextlib.ExitStack) -> str:
    from buffer.server import EmbeddedRedis

    server = EmbeddedRedis()
    cleanup.callback(server.stop)
    log.info("embedded Redis at %s", server.url)
    return server.url


def _start_ray(cfg: SlipstreamConfig, cleanup: contextlib.ExitStack) -> None:
    import ray

    if cfg.run.ray_address:
        ray.init(address=cfg.run.ray_address, log_to_driver=False)
    else:
        # A laptop may have fewer cores than the parts ask for: oversubscribe rather than wait forever.
        wanted = (cfg.rollout.num_workers * cfg.rollout.cpus_per_worker
                  + cfg.trainer.num_ranks * cfg.trainer.cpus_per_rank)
        # address="local": always a private instance, never one that another job on this machine started
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(wanted + 0.999)), include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING)
    cleanup.callback(ray.shutdown)


def _start_workers(cfg: SlipstreamConfig, redis_url: str, prefix: str, cleanup: contextlib.ExitStack) -> list:
    import ray

    from rollout.worker import RolloutWorker

    actor = ray.remote(RolloutWorker).options(num_cpus=cfg.rollout.cpus_per_worker,
                                              num_gpus=cfg.rollout.gpus_per_worker, max_concurrency=4)
    workers = [actor.remote(i, os.path.abspath(cfg.model.path), cfg.rollout, cfg.task, cfg.buffer, cfg.reward,
                            redis_url, prefix, cfg.trainer.groups_per_step, cfg.run.seed)
               for i in range(cfg.rollout.num_workers)]
    cleanup.callback(_stop_workers, workers)
    return workers


def _stop_workers(workers: list) -> None:
    import ray

    for w in workers:
        with contextlib.suppress(Exception):
            w.stop.remote()
    for w in workers:
        with contextlib.suppress(Exception):
            ray.kill(w)


def _start_trainers(cfg: SlipstreamConfig, cleanup: contextlib.ExitStack) -> list:
    import ray

    from buffer.server import free_port
    from trainer.rank import TrainerRank

    actor = ray.remote(TrainerRank).options(num_cpus=cfg.trainer.cpus_per_rank, num_gpus=cfg.trainer.gpus_per_rank)
    master_addr, master_port = ray.util.get_node_ip_address(), free_port()
    ranks = [actor.remote(r, cfg.trainer.num_ranks, master_addr, master_port, os.path.abspath(cfg.model.path),
                          cfg.trainer, cfg.run.seed, cfg.rollout.temperature) for r in range(cfg.trainer.num_ranks)]
    cleanup.callback(lambda: [ray.kill(r) for r in ranks])
    return ranks


def _wait_for_batch(buffer: RedisBuffer, runs: list, cfg: SlipstreamConfig) -> PoppedBatch:
    """Block until B fresh groups are claimed; surface a dead rollout worker's error instead of hanging."""
    import ray

    deadline = time.monotonic() + cfg.run.batch_timeout_s
    while True:
        batch = buffer.pop(cfg.trainer.groups_per_step, timeout_s=2.0)
        if batch is not None:
            return batch
        done, _ = ray.wait(runs, timeout=0)
        if done:
            ray.get(done)  # re-raises the worker's exception
            raise RuntimeError("a rollout worker stopped before the run ended")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no batch of {cfg.trainer.groups_per_step} groups within run.batch_timeout_s="
                               f"{cfg.run.batch_timeout_s}s; buffer: {buffer.stats()}")


def _train(cfg: SlipstreamConfig, buffer: RedisBuffer, workers: list, trainers: list, run_dir: str) -> dict:
    import ray

    held_out = ray.get(workers[0].held_out_prompts.remote())  # also waits for worker 0's engine to be up
    evals = {"seconds": 0.0}

    def evaluate() -> dict:
        """Greedy held-out success, and sampled success at the rollout temperature, timed (not training time)."""
        t = time.perf_counter()
        out = ray.get(workers[0].evaluate.remote(held_out, cfg.run.eval_max_new_tokens, cfg.run.eval_samples))
        evals["seconds"] += time.perf_counter() - t
        return {"held_out_success": out["success"],
                **({"held_out_sampled_success": out["sampled_success"]} if "sampled_success" in out else {})}

    metrics = MetricsWriter(run_dir, cfg.run.tensorboard)
    ray.get([t.__ray_ready__.remote() for t in trainers] + [w.__ray_ready__.remote() for w in workers])
    t_start = time.time()
    success_before = last_eval = evaluate()
    metrics.write(0, {**success_before, "version": 0, "elapsed_s": 0.0, "train_elapsed_s": 0.0})
    runs = [w.run.remote() for w in workers]
    prompt_stats = PromptStats(buffer.client, buffer.prefix, grad_mix=cfg.rollout.gvm.grad_mix)
    totals = {"train_tokens": 0, "train_s": 0.0, "sync_s": 0.0}
    prev_gen, prev_t = buffer.stats()["gen_tokens"], time.time()
    step = 0
    try:
        for step in range(1, cfg.run.total_steps + 1):
            timers = {}
            t = time.perf_counter()
            batch = _wait_for_batch(buffer, runs, cfg)
            timers["wait_batch_s"] = time.perf_counter() - t
            t = time.perf_counter()
            shards = [batch.payloads[r::len(trainers)] for r in range(len(trainers))]
            results = ray.get([tr.train_step.remote(s) for tr, s in zip(trainers, shards)])
            timers["train_s"] = time.perf_counter() - t
            t = time.perf_counter()
            ray.get([tr.send_weights.remote(step) for tr in trainers])
            version = buffer.bump_version()  # only after every generator holds the new weights
            buffer.commit(batch)
            timers["weight_sync_s"] = time.perf_counter() - t
            allocation = _allocation_metrics(cfg, prompt_stats, results, version)
            allocation["pass_rate_hist"], allocation["pass_rate_samples"] = pass_rate_histogram(
                [rewards for r in results for rewards in r["group_rewards"]], cfg.rollout.pass_threshold)
            elapsed = time.time() - t_start
            out_of_time = cfg.run.max_minutes > 0 and elapsed > cfg.run.max_minutes * 60
            last = step == cfg.run.total_steps or out_of_time
            evaluated = step % cfg.run.eval_every == 0 or last
            if evaluated:
                last_eval = evaluate()
            stats = buffer.stats()
            now = time.time()
            m = _step_metrics(batch, results, timers, stats, version, elapsed,
                              (stats["gen_tokens"] - prev_gen) / max(now - prev_t, 1e-9))
            prev_gen, prev_t = stats["gen_tokens"], now
            m.update(allocation)
            m["train_elapsed_s"] = time.time() - t_start - evals["seconds"]  # wall-clock without evaluations
            if evaluated:
                m.update(last_eval)
            totals["train_tokens"] += m["trainer_tokens"]
            totals["train_s"] += timers["train_s"]
            totals["sync_s"] += timers["weight_sync_s"]
            metrics.write(step, m)
            metrics.progress(step, cfg.run.total_steps, m, last_eval["held_out_success"])
            if out_of_time:
                break
    finally:
        metrics.close()
    worker_stats = ray.get([w.stats.remote() for w in workers])
    elapsed = time.time() - t_start
    before, after = success_before["held_out_success"], last_eval["held_out_success"]
    summary = {
        "steps": step, "minutes": round(elapsed / 60, 2), "train_minutes": round((elapsed - evals["seconds"]) / 60, 2),
        "eval_seconds": round(evals["seconds"], 1), "held_out_size": len(held_out),
        **_before_after(success_before, last_eval),
        "generation_tokens_per_s": round(buffer.stats()["gen_tokens"] / elapsed, 1),
        "trainer_tokens_per_s": round(totals["train_tokens"] / max(totals["train_s"], 1e-9), 1),
        "weight_sync_s_mean": round(totals["sync_s"] / max(step, 1), 4),
        "groups_dropped_stale": buffer.stats()["dropped_stale"], "eta": cfg.buffer.eta,
        "groups_per_step": cfg.trainer.groups_per_step, "workers": worker_stats,
    }
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"done: held-out success {before:.3f} -> {after:.3f} in {summary['minutes']} min "
          f"({step} steps); run directory {run_dir}", flush=True)
    return summary


def _before_after(first: dict, last: dict) -> dict:
    """held_out_success_before/_after and improvement_points (and the same with _sampled, when evaluated)."""
    out = {}
    for key, suffix in (("held_out_success", ""), ("held_out_sampled_success", "_sampled")):
        if key in first and key in last:
            out.update({f"{key}_before": first[key], f"{key}_after": last[key],
                        f"improvement_points{suffix}": round(100 * (last[key] - first[key]), 1)})
    return out


def _allocation_metrics(cfg: SlipstreamConfig, prompt_stats: PromptStats, results: list[dict], version: int) -> dict:
    """Group sizes trained this step (the allocation's histogram), and the gradient-norm estimates written back."""
    sizes = [len(rewards) for r in results for rewards in r["group_rewards"]]
    ids = [p for r in results for p in r["prompt_ids"]]
    out = {"group_size_hist": {str(n): sizes.count(n) for n in sorted(set(sizes))},
           "groups_at_n_min": sum(n <= cfg.rollout.gvm.n_min for n in sizes),
           "groups_at_n_max": sum(n >= cfg.rollout.gvm.n_max for n in sizes)}
    norms = {k: v for r in results for k, v in r["grad_norms"].items()}
    if cfg.rollout.allocation == "gvm":
        ages = [version - s.grad_version for s in prompt_stats.get_stats(ids) if s.grad_version >= 0]
        out["grad_stats_age"] = sum(ages) / len(ages) if ages else 0.0
    if norms:
        prompt_stats.record_grad_norms(norms, version)
        out["grad_norm_mean"] = sum(norms.values()) / len(norms)
        out["grad_norm_s"] = max(r["grad_norm_s"] for r in results)
    return out


def _step_metrics(batch: PoppedBatch, results: list[dict], timers: dict, stats: dict, version: int,
                  elapsed: float, gen_tokens_per_s: float) -> dict:
    samples = sum(r["sequences"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    train_s = max(r["seconds"] for r in results)
    avg = lambda k: sum(r[k] * r["sequences"] for r in results) / max(samples, 1)  # noqa: E731
    return {
        "version": version, "reward_mean": avg("reward_mean"), "response_len_mean": avg("response_len_mean"),
        "staleness_mean": sum(batch.staleness) / len(batch.staleness), "staleness_max": max(batch.staleness),
        "buffer_depth": stats["buffered"], "running_groups": stats["running"],
        "dropped_stale": batch.dropped_stale, "dropped_stale_total": stats["dropped_stale"],
        "gen_tokens_per_s": gen_tokens_per_s, "gen_tokens_total": stats["gen_tokens"],
        "trainer_tokens": tokens, "trainer_tokens_per_s": tokens / train_s,
        "optimizer_steps": results[0]["optimizer_steps"],
        "loss": sum(r["loss"] for r in results), "clip_fraction": avg("clip_fraction"),
        "behaviour_weight_mean": avg("behaviour_weight_mean"), "masked_fraction": avg("masked_fraction"),
        "logprob_gap": avg("logprob_gap"), "entropy": avg("entropy"), "kl_ref": avg("kl_ref"),
        **({"value_loss": sum(r["value_loss"] for r in results)} if "value_loss" in results[0] else {}),
        **{f"{k}_total": stats[k] for k in METRIC_COUNTERS}, "elapsed_s": elapsed, **timers,
    }
