"""Per-sample gradient-norm estimates for GVM allocation (G_i of rollout/allocation.py).

exact (the GVM-RAFT paper's estimate): || d/dE  sum_t log pi(y_t | y_<t) ||_2, the gradient of the summed (not
    length-averaged) response log-likelihood with respect to the embedding matrix E, one backward per sample.
proxy (ours, no backward): || d/dz  sum_t log pi(y_t) ||_2 over the logits z of the response positions, which
    is sqrt(sum_t ||onehot(y_t) - softmax(z_t)||^2): the signal that backpropagates into the network. It grows
    with length and with how unsure the model is of its own tokens, as the exact norm does.
A prompt's G_i is the mean over its accepted samples (reward >= the pass threshold), as in the paper.
"""
from __future__ import annotations

import torch


def proxy_grad_norms(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V], targets [B, T], mask [B, T] bool -> [B] float32."""
    probs = torch.softmax(logits.float(), dim=-1)  # [B, T, V]
    p_target = probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T]
    # ||e_y - p||^2 = sum_v p_v^2 - 2 p_y + 1
    sq = (probs * probs).sum(-1) - 2 * p_target + 1.0  # [B, T]
    return torch.sqrt((sq * mask).sum(-1).clamp(min=0))  # [B]


def exact_grad_norms(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One backward per sample through `model` (a plain module, not ZeRO-3 sharded) -> [B] float32."""
    embedding = model.get_input_embeddings().weight
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]  # [B, T, V]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T]
    per_sample = (logp * mask).sum(-1)  # [B]
    norms = []
    for i in range(per_sample.shape[0]):
        (grad,) = torch.autograd.grad(per_sample[i], embedding, retain_graph=i + 1 < per_sample.shape[0])
        norms.append(grad.float().norm())
    return torch.stack(norms)


def prompt_means(norms: torch.Tensor, group_ids: torch.Tensor, accepted: torch.Tensor) -> dict[int, float]:
    """Mean norm over each group's accepted samples; groups with none accepted are left out."""
    out = {}
    for g in torch.unique(group_ids).tolist():
        sel = (group_ids == g) & accepted
        if sel.any():
            out[g] = float(norms[sel].mean())
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(v: list[float]) -> torch.Tensor:
        t = torch.tensor(v, dtype=torch.float64)
        order = torch.argsort(t)
        r = torch.empty_like(t)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for val in torch.unique(t):  # ties share their mean rank
            tie = t == val
            r[tie] = r[tie].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / torch.sqrt((rx * rx).sum() * (ry * ry).sum()))
