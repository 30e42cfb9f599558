"""Policy losses, KL estimators, entropy and loss aggregation: pure functions over tensors.

Shapes: B = sequences, T = shifted positions (position t scores token t+1); masks are bool, True on
response tokens that count. Each policy loss returns a per-token loss [B, T] (0 off the mask) and detached
statistics; `aggregate` turns per-token values into the step's scalar, so that micro-batches add up to the
same number as one big batch. Formulas and when to use each: docs/algorithms.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import functools
from typing import Callable

import torch

from plugins import Registry

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "constant")


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target_t) under logits_t, computed in float32 (bf16 log-softmax is too coarse for ratios).

    logits: [B, T, V], targets: [B, T] -> [B, T]
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T]


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution, float32. logits: [B, T, V] -> [B, T]"""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
    return -(logp.exp() * logp).sum(-1)  # [B, T]


@dataclass
class LossStats:
    clip_fraction: float  # share of counted tokens where a clipped branch was taken
    behaviour_weight_mean: float  # mean importance weight towards the behaviour policy over counted tokens
    masked_fraction: float  # share of response tokens dropped by the behaviour-weight cap
    approx_kl: float  # mean (log pi_centre - log pi_theta) over counted tokens, a cheap drift gauge
    # how many tokens the three means over counted tokens are over (None: every response token); the trainer
    # weighs micro-batches and ranks by it, so a step's means are over all its counted tokens
    counted_tokens: int | None = None


@dataclass
class PolicyLossParams:
    eps_low: float = 0.2
    eps_high: float = 0.28
    dual_clip: float = 0.0  # c > 1 bounds the loss of negative-advantage tokens at c * |A| (0 = off)
    max_behaviour_weight: float = 5.0  # decoupled_ppo: tokens with pi_prox/mu above this are masked out
    tis_cap: float = 2.0  # tis: importance weight pi_prox/mu truncated at this


def _clipped_surrogate(ratio, adv, p: PolicyLossParams):
    unclipped = ratio * adv  # [B, T]
    clipped = torch.clamp(ratio, 1.0 - p.eps_low, 1.0 + p.eps_high) * adv  # [B, T]
    surrogate = torch.minimum(unclipped, clipped)  # [B, T]
    took_clip = clipped < unclipped
    if p.dual_clip > 0:  # Ye et al. 2020: a huge ratio on a negative advantage must not dominate
        floor = p.dual_clip * adv
        took_clip = took_clip | ((adv < 0) & (surrogate < floor))
        surrogate = torch.where(adv < 0, torch.maximum(surrogate, floor), surrogate)
    return surrogate, took_clip


# name -> policy loss `(logp, prox_logp, behaviour_logp, advantages, mask, params) -> (per-token loss [B, T], LossStats)`.
# pi_theta = exp(logp) (gradient), pi_prox = the trainer's weights before the step, mu = the engine that sampled
# (behaviour); gradient flows through logp only. The built-ins:
#   ppo_clip:      r = pi/mu;                         L = -min(r A, clip(r) A)
#   decoupled_ppo: r = pi/pi_prox, w = pi_prox/mu, tokens with w > w_max masked;  L = -w min(r A, clip(r) A)
#   tis:           r = pi/pi_prox, w = min(pi_prox/mu, C);                       L = -w min(r A, clip(r) A)
#   cispo:         w = sg(clip(pi/mu, 1-eps_low, 1+eps_high));                   L = -w A log pi
#   gspo:          s_i = exp(mean_t log(pi/mu)) per sequence; L = -min(s A, clip(s) A) on each token of i
POLICY_LOSSES: Registry = Registry("policy loss", "trainer.loss.name")

# What the trainer calls: a registered loss with its parameters bound (make_policy_loss).
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                  tuple[torch.Tensor, LossStats]]


def make_policy_loss(cfg) -> LossFn:
    """The loss that `trainer.loss` names, with its parameters bound: `loss_fn(logp, prox_logp, behaviour_logp,
    advantages, mask)`. A partial of a module-level function, so it pickles by reference to the trainer ranks."""
    params = PolicyLossParams(eps_low=cfg.eps_low, eps_high=cfg.eps_high, dual_clip=cfg.dual_clip,
                              max_behaviour_weight=cfg.max_behaviour_weight, tis_cap=cfg.tis_cap)
    return functools.partial(POLICY_LOSSES.resolve(cfg.name), params=params)


def _finish(surrogate, took_clip, keep, weight, logp, centre, mask, behaviour_weight) -> tuple[torch.Tensor, LossStats]:
    """The per-token loss -w * surrogate on the kept tokens, and the statistics every loss reports."""
    per_token = -torch.where(keep, weight * surrogate, 0.0)  # [B, T]
    with torch.no_grad():
        kept, n_mask = int(keep.sum()), int(mask.sum())
        n_keep = max(kept, 1)
        stats = LossStats(
            clip_fraction=int((took_clip & keep).sum()) / n_keep,
            behaviour_weight_mean=float(torch.where(keep, behaviour_weight, 0.0).sum()) / n_keep,
            masked_fraction=(1.0 - kept / n_mask) if n_mask else 0.0,
            approx_kl=float(torch.where(keep, centre.detach() - logp, 0.0).sum()) / n_keep,
            counted_tokens=kept,
        )
    return per_token, stats


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(logp, prox_logp, behaviour_logp, advantages, mask, params: PolicyLossParams):
    mu = behaviour_logp.detach()
    surrogate, took_clip = _clipped_surrogate(torch.exp(logp - mu), advantages, params)
    weight = mask.float()
    return _finish(surrogate, took_clip, mask, weight, logp, mu, mask, weight)


def _prox_weighted(logp, prox_logp, behaviour_logp, advantages, mask, keep, weight, params):
    """The decoupled objective (ratio to pi_prox, weighted towards mu) that decoupled_ppo and tis share."""
    prox, mu = prox_logp.detach(), behaviour_logp.detach()
    surrogate, took_clip = _clipped_surrogate(torch.exp(logp - prox), advantages, params)
    return _finish(surrogate, took_clip, keep, weight, logp, prox, mask, torch.exp(prox - mu))


@POLICY_LOSSES.register("decoupled_ppo")
def decoupled_ppo(logp, prox_logp, behaviour_logp, advantages, mask, params: PolicyLossParams):
    raw = torch.exp(prox_logp.detach() - behaviour_logp.detach())  # [B, T]
    keep = mask & (raw <= params.max_behaviour_weight)  # inf / NaN fail the test too
    weight = torch.where(keep, raw, 0.0)  # zero before meeting the surrogate: inf * 0 is NaN
    return _prox_weighted(logp, prox_logp, behaviour_logp, advantages, mask, keep, weight, params)


@POLICY_LOSSES.register("tis")
def tis(logp, prox_logp, behaviour_logp, advantages, mask, params: PolicyLossParams):
    raw = torch.exp(prox_logp.detach() - behaviour_logp.detach())  # [B, T]
    weight = torch.where(mask, torch.clamp(torch.nan_to_num(raw, posinf=params.tis_cap), max=params.tis_cap), 0.0)
    return _prox_weighted(logp, prox_logp, behaviour_logp, advantages, mask, mask, weight, params)


@POLICY_LOSSES.register("cispo")
def cispo(logp, prox_logp, behaviour_logp, advantages, mask, params: PolicyLossParams):
    mu = behaviour_logp.detach()
    ratio = torch.exp(logp.detach() - mu)
    clipped_ratio = torch.clamp(ratio, 1.0 - params.eps_low, 1.0 + params.eps_high)
    surrogate = clipped_ratio * advantages * logp  # REINFORCE-style: every token keeps a gradient
    weight = mask.float()
    return _finish(surrogate, clipped_ratio != ratio, mask, weight, logp, mu, mask, weight)


@POLICY_LOSSES.register("gspo")
def gspo(logp, prox_logp, behaviour_logp, advantages, mask, params: PolicyLossParams):
    mu = behaviour_logp.detach()
    n_tok = mask.sum(-1).clamp(min=1)  # [B]
    log_s = (torch.where(mask, logp - mu, 0.0)).sum(-1) / n_tok  # [B]
    seq_adv = (advantages * mask).sum(-1) / n_tok  # [B], the sequence's advantage
    seq_surrogate, seq_clip = _clipped_surrogate(torch.exp(log_s), seq_adv, params)  # [B]
    weight = mask.float()
    return _finish(seq_surrogate[:, None].expand_as(logp), seq_clip[:, None].expand_as(logp), mask, weight, logp, mu,
                   mask, weight)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(pi_theta || pi_ref) estimate from sampled tokens (Schulman, "Approximating KL").

    k1 = log pi - log pi_ref (unbiased, high variance, can be negative)
    k3 = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1 (unbiased, >= 0, lower variance)
    """
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        d = ref_logp - logp
        return torch.exp(d) - d - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}; one of k1, k3")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, *, step_tokens: int,
              step_sequences: int, constant: float = 1.0) -> torch.Tensor:
    """Per-token values [B, T] -> the scalar this micro-batch adds to the step's loss.

    token_mean:          sum_all / step_tokens (every token weighs the same: long answers weigh more)
    seq_mean_token_mean: sum_i (sum_t / len_i) / step_sequences (every sequence weighs the same)
    constant:            sum_all / (step_sequences * constant) (Dr. GRPO: no length bias, constant = max length)
    step_tokens / step_sequences count the whole step, so micro-batches sum to the full-batch value.
    """
    x = torch.where(mask, per_token, 0.0)  # [B, T]
    if mode == "token_mean":
        return x.sum() / max(step_tokens, 1)
    if mode == "seq_mean_token_mean":
        return (x.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / max(step_sequences, 1)
    if mode == "constant":
        return x.sum() / (max(step_sequences, 1) * constant)
    raise ValueError(f"unknown loss aggregation {mode!r}; one of {', '.join(AGGREGATIONS)}")


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float) -> torch.Tensor:
    """Per-token PPO value loss [B, T]: 0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped within +-clip of
    the value before the step (clip = 0: unclipped)."""
    unclipped = (values - returns) ** 2  # [B, T]
    if clip <= 0:
        return 0.5 * unclipped
    clipped = (old_values + torch.clamp(values - old_values, -clip, clip) - returns) ** 2  # [B, T]
    return 0.5 * torch.maximum(unclipped, clipped)
