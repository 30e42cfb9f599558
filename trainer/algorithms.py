"""Advantages, log-probs and policy losses: pure functions over tensors (no Ray, Redis or DeepSpeed).

Shapes: B = sequences in the (micro-)batch, T = positions (prompt + response, shifted by one so that
position t scores token t+1). Masks are bool with True on response tokens that count.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def grpo_advantages(rewards: torch.Tensor, *, scale_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages for ONE group: A_i = (r_i - mean(r)) / (std(r) + eps) (std: population, ddof=0).

    rewards: [G] -> [G]. A group whose rewards are all equal gets zeros (it carries no signal).
    """
    if bool((rewards == rewards[0]).all()):  # exact zeros: a float mean of e.g. 0.7s is off by an ulp
        return torch.zeros_like(rewards)
    centred = rewards - rewards.mean()  # [G]
    if not scale_by_std:
        return centred
    return centred / (rewards.std(unbiased=False) + eps)  # [G]


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target_t) under logits_t, computed in float32 (bf16 log-softmax is too coarse for ratios).

    logits: [B, T, V], targets: [B, T] -> [B, T]
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T]


@dataclass
class LossStats:
    clip_fraction: float  # share of counted tokens where the clipped branch was taken
    behaviour_weight_mean: float  # mean pi_prox / mu over counted tokens
    masked_fraction: float  # share of response tokens dropped for pi_prox / mu > w_max
    approx_kl: float  # mean (log pi_prox - log pi_theta), a cheap drift gauge


def decoupled_ppo_loss(logp: torch.Tensor, prox_logp: torch.Tensor, behaviour_logp: torch.Tensor,
                       advantages: torch.Tensor, mask: torch.Tensor, *, eps_low: float, eps_high: float,
                       max_behaviour_weight: float, normalizer: float) -> tuple[torch.Tensor, LossStats]:
    """Decoupled PPO (DESIGN.md; AReaL): trust region around the proximal policy, importance weight to mu.

        r_t = pi_theta / pi_prox      w_t = pi_prox / mu  (no gradient; tokens with w_t > w_max masked)
        L   = - sum_t  w_t * min(r_t A_t, clip(r_t, 1 - eps_low, 1 + eps_high) A_t) / normalizer

    All inputs [B, T] (mask bool). `normalizer` is the number of counted tokens in the whole step, so that
    micro-batches add up to a token mean over the step. Returns (scalar loss, detached stats).
    Plain PPO clip is the special case prox_logp == behaviour_logp (then w_t = 1).
    """
    prox_logp = prox_logp.detach()  # pi_prox is a fixed reference: no gradient through it
    ratio = torch.exp(logp - prox_logp)  # [B, T]
    raw_weight = torch.exp(prox_logp - behaviour_logp).detach()  # [B, T]
    keep = mask & (raw_weight <= max_behaviour_weight)  # [B, T]; inf / NaN weights fail the test too
    # zero masked weights before they meet the surrogate: inf * 0 would be NaN in the loss and its gradient
    weight = torch.where(keep, raw_weight, 0.0)  # [B, T]
    unclipped = ratio * advantages  # [B, T]
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages  # [B, T]
    surrogate = torch.minimum(unclipped, clipped)  # [B, T]
    loss = -(weight * surrogate).sum() / normalizer
    with torch.no_grad():
        n_keep = max(int(keep.sum()), 1)
        n_mask = int(mask.sum())
        stats = LossStats(
            clip_fraction=int(((clipped < unclipped) & keep).sum()) / n_keep,
            behaviour_weight_mean=float(weight.sum()) / n_keep,
            masked_fraction=(1.0 - int(keep.sum()) / n_mask) if n_mask else 0.0,
            approx_kl=float(torch.where(keep, prox_logp - logp, 0.0).sum()) / n_keep,
        )
    return loss, stats
