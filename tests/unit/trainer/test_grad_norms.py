"""Gradient-norm estimates: the proxy's closed form, the exact per-sample backward, means and Spearman."""
from __future__ import annotations

import math

import pytest
import torch

from trainer.grad_norms import exact_grad_norms, prompt_means, proxy_grad_norms, spearman


def test_proxy_is_the_norm_of_onehot_minus_softmax_over_response_tokens():
    # one position, 2-way logits [0, ln 3]: p = [1/4, 3/4], target 1: ||(0, 1) - p||^2 = 1/16 + 1/16 = 1/8
    # a second, masked position must not count
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 0.0]]])
    norms = proxy_grad_norms(logits, torch.tensor([[1, 1]]), torch.tensor([[True, False]]))
    assert norms.tolist() == pytest.approx([math.sqrt(1 / 8)])


def test_proxy_matches_autograd_on_the_logits():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, requires_grad=True)
    targets, mask = torch.randint(0, 5, (2, 3)), torch.tensor([[True, True, False], [True, True, True]])
    logp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    expected = []
    for i in range(2):
        (g,) = torch.autograd.grad((logp[i] * mask[i]).sum(), logits, retain_graph=True)
        expected.append(float(g.norm()))
    assert proxy_grad_norms(logits.detach(), targets, mask).tolist() == pytest.approx(expected, rel=1e-5)


def test_exact_norm_matches_a_manual_backward_per_sample():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=11, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    ids = torch.randint(0, 11, (2, 5))
    attn = torch.ones_like(ids)
    targets, mask = ids[:, 1:], torch.tensor([[False, True, True, True], [False, False, True, True]])
    got = exact_grad_norms(model, ids, attn, targets, mask)
    for i in range(2):
        model.zero_grad()
        logits = model(input_ids=ids[i:i + 1], attention_mask=attn[i:i + 1]).logits[:, :-1]
        logp = torch.log_softmax(logits, -1).gather(-1, targets[i:i + 1].unsqueeze(-1)).squeeze(-1)
        (logp * mask[i:i + 1]).sum().backward()
        assert float(got[i]) == pytest.approx(float(model.get_input_embeddings().weight.grad.norm()), rel=1e-4)


def test_prompt_means_use_accepted_samples_only():
    norms = torch.tensor([1.0, 3.0, 5.0, 7.0])
    groups = torch.tensor([0, 0, 1, 1])
    accepted = torch.tensor([True, True, False, False])
    assert prompt_means(norms, groups, accepted) == {0: 2.0}  # group 1 has no accepted sample


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x: 0,1,2 ; y: 0,2,1 -> centred (-1,0,1), (-1,1,0): sum 1 / sqrt(2 * 2) = 0.5
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
