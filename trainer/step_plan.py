"""How one popped batch is cut across trainer ranks and optimizer steps. Pure: integers in, integers out.

Every rank receives the whole batch and computes the same plan, so that N ranks compute what one rank computes:
- each group belongs to one rank (balanced by tokens: largest group to the least-loaded rank), for the whole step;
- the optimizer steps are ppo_epochs passes over mini_batches_per_step mini-batches of whole groups, cut from the
  batch order (first epoch) or from a permutation seeded by (seed, batch index, epoch) that does not depend on the
  rank; a rank trains on its own groups of each mini-batch;
- each mini-batch's loss divides by the tokens and sequences of the whole mini-batch (all ranks), not of one
  rank's share, so token_mean weighs every token of a step alike however the step is spread.
"""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class MiniBatch:
    groups: list[int]  # indices into the popped batch, all ranks together
    tokens: int  # response tokens of those groups
    sequences: int  # samples of those groups


@dataclass(frozen=True)
class StepPlan:
    owner: list[int]  # owner[g]: the rank that trains on group g
    mini_batches: list[MiniBatch]  # one per optimizer step, in order

    def groups_of(self, rank: int) -> list[int]:
        return [g for g, r in enumerate(self.owner) if r == rank]


def assign_groups(group_tokens: list[int], world_size: int) -> list[int]:
    """owner[g] for each group: longest-processing-time first (largest group to the least-loaded rank, ties to
    the lower rank), so ranks get about equal tokens even when group sizes vary (GVM)."""
    load, owner = [0] * world_size, [0] * len(group_tokens)
    for g in sorted(range(len(group_tokens)), key=lambda g: (-group_tokens[g], g)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        owner[g], load[r] = r, load[r] + group_tokens[g]
    return owner


def split_evenly(items: list[int], parts: int) -> list[list[int]]:
    """`parts` consecutive chunks whose sizes differ by at most one (the first ones larger), like tensor_split."""
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def plan_step(group_tokens: list[int], group_sizes: list[int], *, world_size: int, ppo_epochs: int = 1,
              mini_batches_per_step: int = 1, seed: int = 0, batch_index: int = 0) -> StepPlan:
    """The plan for one popped batch: group_tokens[g] response tokens and group_sizes[g] samples per group."""
    num_groups = len(group_tokens)
    steps = []
    for epoch in range(ppo_epochs):
        order = list(range(num_groups))
        if epoch > 0:  # the same permutation on every rank and every rerun
            random.Random(f"{seed}-{batch_index}-{epoch}").shuffle(order)
        for chunk in split_evenly(order, mini_batches_per_step):
            steps.append(MiniBatch(chunk, sum(group_tokens[g] for g in chunk), sum(group_sizes[g] for g in chunk)))
    return StepPlan(assign_groups(group_tokens, world_size), steps)
