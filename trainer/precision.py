"""Numerics of the policy's output layer.

With a bf16 model the logits would come out of a bf16 matmul, and a float32 log-softmax of bf16 logits still
carries their rounding (about 3 significant digits): too coarse for importance ratios near 1. The hook below
recomputes the LM head in float32 from the same input and weight, so log-probs are float32 end to end.
Register it before `deepspeed.initialize`: hooks run in registration order, so under ZeRO-3 it runs while the
head's weight is still gathered.
"""
from __future__ import annotations

import torch


def _float32_output(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    bias = module.bias.float() if getattr(module, "bias", None) is not None else None
    return torch.nn.functional.linear(inputs[0].float(), module.weight.float(), bias)


def float32_lm_head(model: torch.nn.Module):
    """Make `model`'s output layer compute in float32; returns the hook handle (no-op for float32 models)."""
    head = model.get_output_embeddings()
    if head is None or head.weight.dtype == torch.float32:
        return None
    return head.register_forward_hook(_float32_output)
