"""What a trainer step reports: one StepResult per rank, merged into the step's by `merge`. Pure.

The token-weighted statistics are additive: each rank divides its sums by the tokens of the whole step (every
rank knows them, trainer/step_plan.py), so the step's value is the sum over ranks, the same number one rank
would report for the whole batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

# Statistics of the policy update: token-weighted within a step, the mean over a batch's optimizer steps;
# additive over ranks.
UPDATE_STATS = ("loss", "clip_fraction", "behaviour_weight_mean", "masked_fraction", "approx_kl", "logprob_gap",
                "entropy", "kl_ref")
# ... of which the loss's means over its counted tokens (trainer/losses.py LossStats), weighted by those tokens
COUNTED_MEANS = ("clip_fraction", "behaviour_weight_mean", "approx_kl")


@dataclass
class StepResult:
    # additive over ranks
    loss: float = 0.0
    clip_fraction: float = 0.0
    behaviour_weight_mean: float = 0.0
    masked_fraction: float = 0.0
    approx_kl: float = 0.0
    logprob_gap: float = 0.0  # mean |log pi_prox - log mu| per response token: engine vs trainer before the step
    entropy: float = 0.0
    kl_ref: float = 0.0
    value_loss: float | None = None  # only with a critic (gae)
    tokens: int = 0  # prompt + response tokens this rank trained on
    grad_norms: dict[str, float] = field(default_factory=dict)  # per prompt id, for GVM (this rank's groups)
    # the same on every rank
    grad_norm: float | None = None  # global gradient norm before clipping, mean over the batch's optimizer steps
    optimizer_steps: int = 0
    skipped_steps: int = 0  # optimizer steps every rank skipped because a loss was not finite on some rank
    sequences: int = 0  # of the whole batch
    reward_mean: float = 0.0
    response_len_mean: float = 0.0
    group_rewards: list[list[float]] = field(default_factory=list)  # per group of the batch: its size and pass rate
    prompt_ids: list[str] = field(default_factory=list)
    # the slowest rank
    seconds: float = 0.0  # this rank's compute for the step, all phases
    grad_norm_s: float = 0.0  # of which: per-prompt gradient-norm estimates

    def as_metrics(self) -> dict:
        """The scalar fields by name (for metrics.jsonl)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def merge(results: list[StepResult]) -> StepResult:
    """The step's result from every rank's."""
    first = results[0]
    summed = {k: sum(getattr(r, k) for r in results) for k in UPDATE_STATS + ("tokens",)}
    value_loss = None if first.value_loss is None else sum(r.value_loss for r in results)
    return replace(first, **summed, value_loss=value_loss,
                   grad_norms={k: v for r in results for k, v in r.grad_norms.items()},
                   seconds=max(r.seconds for r in results), grad_norm_s=max(r.grad_norm_s for r in results))
