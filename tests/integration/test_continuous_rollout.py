"""The continuous rollout loop against the real Redis buffer and the real engine, with a trainer stand-in that pops
a step's groups, sends new weights and bumps the version while the worker's requests are mid-sequence: the
staleness bound holds for groups whose samples span several versions (DESIGN.md / docs/algorithms.md, "Staleness
with samples that span versions")."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from buffer.api import BufferConfig, connect
from rewards import RewardConfig, build_scorer
from rollout.api import DataConfig, RolloutConfig, SourceContext, TaskConfig
from rollout.tasks.addition import addition_source
from rollout.worker import RolloutWorker

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode", ["keep", "abort"])
def test_the_staleness_bound_holds_over_many_updates_landing_mid_generation(vllm_engine, tiny_model_path,
                                                                            redis_server, key_prefix, mode):
    from safetensors.torch import load_file

    # (eta + 1) * B = 16 slots, all in flight at once: a step's 4 groups finish while 12 others still run, so the
    # weights that follow land mid-generation
    eta, B, min_steps, max_steps = 3, 4, 8, 24
    original = load_file(f"{tiny_model_path}/model.safetensors")
    gen = torch.Generator().manual_seed(1)
    # noisy weights: the tiny model then rambles for up to 50 tokens, so updates land mid-sequence
    noisy = [{k: (v + 0.3 * torch.randn(v.shape, generator=gen)).numpy() for k, v in original.items()}
             for _ in range(max_steps + 1)]
    vllm_engine.mode, start = mode, vllm_engine.version
    vllm_engine.load_weights(start + 1, {k: torch.from_numpy(v) for k, v in noisy[0].items()})
    buf = connect(redis_server.url, key_prefix, BufferConfig(eta=eta, groups_per_step=B, max_in_flight=16,
                                                             max_buffered=64))
    buf.initialize(version=start + 1)
    cfg = RolloutConfig(group_size=4, groups_in_flight=16, max_new_tokens=50, weight_update=mode)
    worker = RolloutWorker(0, cfg, engine=vllm_engine, prompts=addition_source(DataConfig(), TaskConfig(),
                                                                                SourceContext()),
                           buffer=buf, prompt_stats=buf.prompt_stats(), scorer=build_scorer(RewardConfig()))
    loop = threading.Thread(target=worker.run, daemon=True)
    loop.start()
    staleness, spanning, steps = [], 0, 0
    try:
        for step in range(max_steps):
            if step >= min_steps and spanning >= 3:
                break  # enough updates landed mid-sequence (how many do depends on timing)
            batch = buf.pop(B, timeout_s=60)
            assert batch is not None, f"step {step}: no batch"
            staleness += batch.staleness
            for g in batch.groups:
                assert batch.version - g.min_version <= eta
                spanning += sum(len(set(s.token_versions.tolist())) > 1 for s in g.samples)
            buf.commit(batch)
            # the update lands while the worker's requests decode, as a trainer's does while it generates; a fixed
            # pause let every request finish first on a faster machine (and a differently built tiny model)
            _wait_for_decoding(vllm_engine)
            # weights first, then the version
            worker.receive_weights(batch.version + 1, {"kind": "arrays", "arrays": noisy[step + 1]})
            buf.bump_version()
            steps += 1
    finally:
        worker.stop()
        loop.join(timeout=60)
        vllm_engine.mode = "keep"
        vllm_engine.load_weights(vllm_engine.version + 1, original)
    assert not loop.is_alive()
    assert max(staleness) <= eta and len(staleness) == steps * B
    assert spanning >= 3, "too few samples spanned an update: the test did not exercise what it claims"
    assert worker.stats()["weight_loads"] >= steps // 2
    stats = buf.stats()
    assert stats["running"] == 0  # the stopped worker gave back the slots of the groups it left in the engine
    assert np.isfinite(stats["gen_tokens"])


def _wait_for_decoding(engine, timeout_s: float = 10.0) -> None:
    """Until the engine runs requests (the 12 groups still in flight, or the 4 the commit let in), then a few
    decoding steps more: an update now lands mid-sequence."""
    deadline = time.monotonic() + timeout_s
    while engine.in_flight() == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)
