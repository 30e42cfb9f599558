"""Sample allocation per prompt: uniform, or gradient-variance-aware (GVM). Pure functions over numbers.

GVM (GVM-RAFT, arXiv 2505.02391, the sample-size rule of its Theorem; reference implementation
`calc_sample_ratio` in RLHFlow/GVM em/stage_2_calc_sample_size.py): with per-prompt acceptance rate p_i,
gradient-norm estimate G_i, budget N and constants alpha, beta,

    w_i = G_i / sqrt(p_i + alpha / p_i^(beta - 1)),        n_i = N * w_i / sum_l w_l

(the paper sets n_i = 0 when p_i = 0 or G_i = 0). What we change, and why:
- p_i is a Beta(prior_a, prior_b) posterior mean, (passes + a) / (attempts + a + b), so a prompt never seen
  solved still gets explored instead of n_i = 0 forever;
- every n_i lies in [n_min, n_max]: GRPO-style advantages need n_i >= 2, and a cap keeps one prompt from
  taking the whole budget on a noisy estimate;
- the real-valued n_i are rounded to integers that keep the sum N by largest remainders (the reference
  rounds, then corrects the error by the largest residuals: the same result when bounds do not bind).

A second rule, `neyman`, is ours, for group-baselined estimators (GRPO, RLOO) with a pass/fail reward. A
group's gradient estimate (1/n) sum_j (r_j - p_i) grad log pi(y_j) has variance ~ p_i (1 - p_i) G_i^2 / n_i;
minimising sum_i p_i (1 - p_i) G_i^2 / n_i subject to sum_i n_i = N is Neyman allocation:

    w_i = G_i * sqrt(p_i (1 - p_i)),                       n_i = N * w_i / sum_l w_l

It puts the budget on prompts solved about half the time, where the paper's rule (derived for rejection
sampling, where only accepted samples carry gradient) puts it on prompts that are rarely solved.
"""
from __future__ import annotations

import math

from plugins import Registry

# name -> weight rule `(pass_rates, grad_norms, *, alpha, beta) -> weights`; n_i is proportional to w_i
ALLOCATION_RULES: Registry = Registry("allocation rule", "rollout.gvm.rule")


def smoothed_pass_rate(passes: float, attempts: float, prior_a: float = 1.0, prior_b: float = 1.0) -> float:
    """Posterior mean of a Beta(prior_a, prior_b) prior after `passes` of `attempts` (may be recency-weighted)."""
    return (passes + prior_a) / (attempts + prior_a + prior_b)


@ALLOCATION_RULES.register("paper")
def gvm_weights(pass_rates: list[float], grad_norms: list[float], *, alpha: float = 1e-3,
                beta: float = 2.0) -> list[float]:
    """w_i = G_i / sqrt(p_i + alpha / p_i^(beta - 1)); 0 where p_i = 0 or G_i = 0 (as the reference)."""
    out = []
    for p, g in zip(pass_rates, grad_norms):
        if p <= 0 or g <= 0:
            out.append(0.0)
        else:
            out.append(g / math.sqrt(p + alpha / p ** (beta - 1.0)))
    return out


def neyman_weights(pass_rates: list[float], grad_norms: list[float]) -> list[float]:
    """w_i = G_i * sqrt(p_i (1 - p_i)): 0 where p_i is 0 or 1 (a group of one outcome has zero advantage)."""
    return [max(g, 0.0) * math.sqrt(max(p * (1.0 - p), 0.0)) for p, g in zip(pass_rates, grad_norms)]


@ALLOCATION_RULES.register("neyman")
def _neyman_rule(pass_rates: list[float], grad_norms: list[float], *, alpha: float, beta: float) -> list[float]:
    return neyman_weights(pass_rates, grad_norms)  # alpha and beta belong to the paper's rule


def largest_remainder(shares: list[float], total: int) -> list[int]:
    """Integers that sum to `total`, each floor(share) or floor(share) + 1, largest remainders rounded up.
    `shares` must sum to `total` (up to float error)."""
    floors = [math.floor(s + 1e-9) for s in shares]
    short = total - sum(floors)
    order = sorted(range(len(shares)), key=lambda i: (-(shares[i] - floors[i]), i))
    for i in order[:max(short, 0)]:
        floors[i] += 1
    return floors


def bounded_shares(weights: list[float], budget: int, n_min: int, n_max: int) -> list[float]:
    """Split `budget` in proportion to `weights`, with every share in [n_min, n_max] (water-filling: shares
    that hit a bound are fixed there and the rest is split again among the others). Zero total weight splits
    evenly."""
    k = len(weights)
    if not n_min * k <= budget <= n_max * k:
        raise ValueError(f"budget {budget} cannot be split over {k} prompts within [{n_min}, {n_max}] each")
    shares: list[float | None] = [None] * k
    while True:
        free = [i for i in range(k) if shares[i] is None]
        left = budget - sum(s for s in shares if s is not None)
        w_sum = sum(weights[i] for i in free)
        trial = {i: (left * weights[i] / w_sum if w_sum > 0 else left / len(free)) for i in free}
        low = [i for i in free if trial[i] < n_min]
        high = [i for i in free if trial[i] > n_max]
        if not low and not high:
            for i in free:
                shares[i] = trial[i]
            return [float(s) for s in shares]
        # fix the side that violates more, then split again (each round fixes at least one prompt)
        for i in (low if sum(n_min - trial[i] for i in low) >= sum(trial[i] - n_max for i in high) else high):
            shares[i] = float(n_min if trial[i] < n_min else n_max)


def allocate(pass_rates: list[float], grad_norms: list[float], budget: int, *, n_min: int, n_max: int,
             alpha: float = 1e-3, beta: float = 2.0, rule: str = "paper") -> list[int]:
    """Samples per prompt under `rule` (a registered name or dotted path: paper, GVM's theorem; neyman, the
    group-variance rule), within
    [n_min, n_max], summing to `budget`."""
    weights = ALLOCATION_RULES.resolve(rule)(pass_rates, grad_norms, alpha=alpha, beta=beta)
    return largest_remainder(bounded_shares(weights, budget, n_min, n_max), budget)
