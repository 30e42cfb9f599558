"""A loss that is NaN or infinite on one rank: every rank skips that optimizer step together.

A rank that raised alone would leave the others blocked in the gradient all-reduce. Instead every rank asks
`finite_on_every_rank` before each backward (a collective), and once any says no, all go on with zero losses for
the rest of the step (their all-reduces still match) and take its optimizer step `frozen`, at learning rate 0: the
weights stay as they are and DeepSpeed's step count and gradient-accumulation boundary stay in step. Adam's
moments still take the finite part of the accumulated gradient: a documented, small skew.
"""
from __future__ import annotations

import contextlib

import torch


def zero_loss(engine) -> torch.Tensor:
    """A loss of exactly 0 that still touches every parameter, so a rank with nothing to train (an empty
    micro-batch, a skipped step) takes part in the gradient all-reduce like the others."""
    return sum(p.sum() for p in engine.module.parameters()) * 0.0


def backward_and_step(engine, loss: torch.Tensor, world_size: int, skipped: bool, last: bool) -> bool:
    """One micro-batch's backward and DeepSpeed step; returns whether this optimizer step is being skipped (it was
    already, or the loss is not finite on some rank). `last`: the micro-batch that ends the optimizer step."""
    skipped = not finite_on_every_rank(loss, world_size) or skipped
    if skipped:
        loss = zero_loss(engine)
    # DeepSpeed averages gradients over ranks; the loss is already this rank's share of the step's sum
    engine.backward(loss * world_size, scale_wrt_gas=False)
    with frozen(engine) if skipped and last else contextlib.nullcontext():
        engine.step()
    return skipped


def finite_on_every_rank(loss: torch.Tensor, world_size: int) -> bool:
    finite = torch.tensor([float(torch.isfinite(loss.detach()).all())], device=loss.device)
    if world_size > 1:
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite.item())


@contextlib.contextmanager
def frozen(engine):
    """The optimizer step of `engine` (a DeepSpeed engine) at learning rate 0."""
    groups = engine.optimizer.param_groups
    lrs = [g["lr"] for g in groups]
    for g in groups:
        g["lr"] = 0.0
    try:
        yield
    finally:
        for g, lr in zip(groups, lrs):
            g["lr"] = lr
