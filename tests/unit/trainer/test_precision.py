"""The float32 LM head for bf16 models."""
from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from trainer.precision import float32_lm_head


def _model() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg)


def test_bf16_model_gets_float32_logits_equal_to_a_float32_head_on_the_same_hidden_states():
    model = _model().to(torch.bfloat16)
    ids = torch.randint(0, 50, (2, 7))
    hidden = model.model(input_ids=ids).last_hidden_state  # bf16 [2, 7, 32]
    float32_lm_head(model)
    logits = model(input_ids=ids).logits
    assert logits.dtype == torch.float32
    expected = hidden.float() @ model.get_output_embeddings().weight.float().T  # [2, 7, 50]
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    # and it is finer than the bf16 matmul it replaces
    assert (logits - (hidden @ model.get_output_embeddings().weight.T).float()).abs().max() > 0


def test_gradient_still_reaches_the_tied_weight():
    model = _model().to(torch.bfloat16)
    float32_lm_head(model)
    model(input_ids=torch.randint(0, 50, (1, 5))).logits.sum().backward()
    grad = model.get_input_embeddings().weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_float32_model_is_left_alone():
    assert float32_lm_head(_model()) is None
