"""Evaluation metrics over scored samples: pure functions.

For a prompt with n samples of which c pass, pass@k is the chance that k samples drawn from the n hold a pass,
1 - C(n - c, k) / C(n, k) (the unbiased estimator of Chen et al. 2021; with n = k it is "any sample passed");
mean@k is the mean reward over the samples. Both are averaged over prompts.
"""
from __future__ import annotations

from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    return 1.0 - comb(n - c, k) / comb(n, k)


def summarize(rewards_per_prompt: list[list[float]], k: int, pass_threshold: float) -> dict[str, float]:
    """{"mean@k", "pass@k"} over prompts, each with its samples' rewards (n >= k samples per prompt)."""
    if not rewards_per_prompt:
        raise ValueError("no prompts to summarize")
    means, passes = [], []
    for rewards in rewards_per_prompt:
        means.append(sum(rewards) / len(rewards))
        passes.append(pass_at_k(len(rewards), sum(r >= pass_threshold for r in rewards), k))
    return {f"mean@{k}": sum(means) / len(means), f"pass@{k}": sum(passes) / len(passes)}
