"""How many samples each prompt of a plan gets: uniform, or GVM from the shared statistics.

Pure: takes the statistics read from Redis and returns counts. The worker plans rollout.groups_in_flight prompts
at a time; the budget of a plan is (its prompts) x group_size samples, so GVM redistributes samples between the
prompts of one plan and never spends more than uniform would; the admission guard keeps counting groups.
"""
from __future__ import annotations

from dataclasses import dataclass

from buffer.api import PromptStat
from rollout.allocation import allocate, smoothed_pass_rate
from rollout.config import GvmConfig


@dataclass
class SamplingPlan:
    counts: list[int]  # samples per prompt, in prompt order
    pilots: int  # prompts never seen, given gvm.pilot_size


def plan_samples(stats: list[PromptStat], group_size: int, allocation: str, gvm: GvmConfig) -> SamplingPlan:
    k, budget = len(stats), len(stats) * group_size
    if allocation == "uniform":
        return SamplingPlan([group_size] * k, 0)
    if allocation != "gvm":
        raise ValueError(f"unknown rollout.allocation {allocation!r}; one of uniform, gvm")
    counts = [0] * k
    pilots = [i for i, s in enumerate(stats) if s.seen == 0]
    known = [i for i in range(k) if stats[i].seen > 0]
    # pilots first, but never so many that the known prompts cannot get n_min each
    pilot_n = min(gvm.pilot_size, (budget - gvm.n_min * len(known)) // max(len(pilots), 1)) if pilots else 0
    for i in pilots:
        counts[i] = pilot_n
    if known:
        norms = [stats[i].grad_norm for i in known if stats[i].grad_norm is not None]
        fallback = sum(norms) / len(norms) if norms else 1.0  # no estimate yet: the batch mean, else neutral
        p = [smoothed_pass_rate(stats[i].passes, stats[i].attempts, gvm.prior_a, gvm.prior_b) for i in known]
        g = [stats[i].grad_norm if stats[i].grad_norm is not None else fallback for i in known]
        n_max = max(gvm.n_max, -(-(budget - pilot_n * len(pilots)) // len(known)))  # feasible cap
        for i, n in zip(known, allocate(p, g, budget - pilot_n * len(pilots), n_min=gvm.n_min, n_max=n_max,
                                        alpha=gvm.alpha, beta=gvm.beta, rule=gvm.rule)):
            counts[i] = n
    elif pilots:  # only new prompts: spread the whole budget over them
        counts = [budget // k + (1 if i < budget % k else 0) for i in range(k)]
    return SamplingPlan(counts, len(pilots))
