"""Advantage estimators: pure functions over reward / value tensors (no Ray, Redis or DeepSpeed).

Sequence-level estimators (GRPO, RLOO, batch-normalised) take each group's rewards and return one
advantage per sample; GAE works per token with a value model. See docs/algorithms.md for when to use which.
"""
from __future__ import annotations

import torch

from plugins import Registry
from trainer.config import AdvantageConfig

EPS = 1e-6

# name -> estimator. Sequence-level: `(rewards [B], group_ids [B], cfg: AdvantageConfig) -> [B]`, computed over the
# whole popped batch. Token-level with a value model (attribute `uses_critic = True`):
# `(token_rewards [B, T], values [B, T], mask [B, T], cfg) -> (advantages [B, T], returns [B, T])`.
ADVANTAGES: Registry = Registry("advantage", "trainer.advantage.name")


def uses_critic(estimator) -> bool:
    return getattr(estimator, "uses_critic", False) is True


def _all_equal(rewards: torch.Tensor) -> bool:
    # exact test: a float mean of e.g. eight 0.7s is an ulp off, which std scaling would blow up
    return bool((rewards == rewards.reshape(-1)[0]).all())


def grpo_advantages(rewards: torch.Tensor, *, scale_by_std: bool = True, eps: float = EPS) -> torch.Tensor:
    """GRPO advantages for ONE group: A_i = (r_i - mean(r)) / (std(r) + eps) (std: population, ddof=0).

    rewards: [G] -> [G]. A group whose rewards are all equal gets zeros (it carries no signal).
    scale_by_std=False gives the mean-centred form (Dr. GRPO drops the std: it favours easy/hard prompts).
    """
    if _all_equal(rewards):
        return torch.zeros_like(rewards)
    centred = rewards - rewards.mean()  # [G]
    if not scale_by_std:
        return centred
    return centred / (rewards.std(unbiased=False) + eps)  # [G]


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out: A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean(r)).

    rewards: [G] (G >= 2) -> [G]. Unbiased: the baseline of sample i does not depend on r_i.
    """
    G = rewards.numel()
    if G < 2:
        raise ValueError("RLOO needs at least 2 samples per group")
    if _all_equal(rewards):
        return torch.zeros_like(rewards)
    return (rewards - (rewards.sum() - rewards) / (G - 1))  # [G]


def batch_normalized_advantages(group_rewards: list[torch.Tensor], *, center: str = "group",
                                eps: float = EPS) -> list[torch.Tensor]:
    """Advantages normalised by the standard deviation over the whole batch (ScaleRL).

    center="group": A_i = (r_i - mean(group of i)) / std(all centred values in the batch)   (ScaleRL)
    center="batch": A_i = (r_i - mean(batch)) / std(batch)                                 (REINFORCE++)
    A batch-level std is steadier than a per-group std when groups are small or nearly uniform.
    """
    if center == "group":
        centred = [r - r.mean() if not _all_equal(r) else torch.zeros_like(r) for r in group_rewards]
    elif center == "batch":
        mean = torch.cat(group_rewards).mean()
        centred = [r - mean for r in group_rewards]
    else:
        raise ValueError(f"center must be 'group' or 'batch', got {center!r}")
    flat = torch.cat(centred)  # [N]
    std = flat.std(unbiased=False)
    if std <= eps:
        return [torch.zeros_like(c) for c in centred]
    return [c / (std + eps) for c in centred]


def gae(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens.

    token_rewards, values: [B, T] float; mask: [B, T] bool (response positions, contiguous per row).
        delta_t = r_t + gamma * V_{t+1} - V_t        (V after the last response token is 0: episode ends)
        A_t     = delta_t + gamma * lam * A_{t+1}
    Returns (advantages [B, T], returns = A + V [B, T]), both 0 off the mask.
    """
    m = mask.float()
    v = values * m  # [B, T]
    next_v = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1) * torch.cat(
        [m[:, 1:], torch.zeros_like(m[:, :1])], dim=1)  # [B, T], V_{t+1} only if t+1 is a response token
    delta = (token_rewards + gamma * next_v - v) * m  # [B, T]
    adv = torch.zeros_like(delta)
    running = torch.zeros_like(delta[:, 0])  # [B]
    for t in range(delta.shape[1] - 1, -1, -1):
        running = delta[:, t] + gamma * lam * running * m[:, t + 1] if t + 1 < delta.shape[1] else delta[:, t]
        adv[:, t] = running * m[:, t]
    return adv, (adv + v) * m


@ADVANTAGES.register("grpo")
def _grpo(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: AdvantageConfig) -> torch.Tensor:
    return _per_group(rewards, group_ids, lambda r: grpo_advantages(r, scale_by_std=cfg.scale_by_std))


@ADVANTAGES.register("rloo")
def _rloo(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: AdvantageConfig) -> torch.Tensor:
    return _per_group(rewards, group_ids, rloo_advantages)


@ADVANTAGES.register("batch")
def _batch(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: AdvantageConfig) -> torch.Tensor:
    groups = _groups(group_ids)
    out = torch.zeros_like(rewards)
    for idx, adv in zip(groups, batch_normalized_advantages([rewards[i] for i in groups], center=cfg.batch_center)):
        out[idx] = adv
    return out


@ADVANTAGES.register("gae")
def _gae(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
         cfg: AdvantageConfig) -> tuple[torch.Tensor, torch.Tensor]:
    return gae(token_rewards, values, mask, gamma=cfg.gamma, lam=cfg.lam)


_gae.uses_critic = True  # type: ignore[attr-defined]


def _groups(group_ids: torch.Tensor) -> list[torch.Tensor]:
    return [torch.nonzero(group_ids == g).squeeze(-1) for g in torch.unique(group_ids, sorted=True)]


def _per_group(rewards: torch.Tensor, group_ids: torch.Tensor, fn) -> torch.Tensor:
    out = torch.zeros_like(rewards)
    for idx in _groups(group_ids):
        out[idx] = fn(rewards[idx])
    return out
