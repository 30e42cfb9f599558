"""Turn groups from the buffer into padded training tensors. Pure: numpy/torch only.

Layout per sequence: prompt tokens then response tokens, right-padded. Position t of the shifted tensors
scores token t+1, so the response token at absolute index j sits at shifted position j-1.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from buffer.api import Group


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # long [B, T+1]
    attention_mask: torch.Tensor  # long [B, T+1]
    targets: torch.Tensor  # long [B, T], input_ids shifted left by one
    response_mask: torch.Tensor  # bool [B, T], True where targets are response tokens
    behaviour_logp: torch.Tensor  # float32 [B, T], engine log-probs at response positions, 0 elsewhere
    rewards: torch.Tensor  # float32 [B], the sequence's reward
    group_ids: torch.Tensor  # long [B], index of the sequence's group in the batch

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def select(self, rows: slice) -> "TrainBatch":
        return TrainBatch(*(getattr(self, f.name)[rows] for f in fields(self)))

    def to(self, device: torch.device | str) -> "TrainBatch":
        return TrainBatch(*(getattr(self, f.name).to(device) for f in fields(self)))


def build_train_batch(groups: list[Group], *, pad_id: int = 0) -> TrainBatch:
    """Groups -> one padded batch (advantages are computed from it by trainer.advantages)."""
    rows = [(s.prompt_ids, s.response_ids, s.behaviour_logprobs, s.reward, gi)
            for gi, g in enumerate(groups) for s in g.samples]
    width = max((len(p) + len(r) for p, r, *_ in rows), default=1)  # no groups (a rank with no share): 0 rows
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    resp_mask = torch.zeros((n, width - 1), dtype=torch.bool)
    behaviour = torch.zeros((n, width - 1), dtype=torch.float32)
    for i, (p, r, lp, _, _) in enumerate(rows):
        P, R = len(p), len(r)
        input_ids[i, :P + R] = torch.from_numpy(np.concatenate([p, r]).astype(np.int64))
        attention[i, :P + R] = 1
        resp = slice(P - 1, P - 1 + R)  # shifted positions that predict the response tokens
        resp_mask[i, resp] = True
        behaviour[i, resp] = torch.from_numpy(lp.astype(np.float32))
    return TrainBatch(input_ids=input_ids, attention_mask=attention, targets=input_ids[:, 1:],
                      response_mask=resp_mask, behaviour_logp=behaviour,
                      rewards=torch.tensor([r[3] for r in rows], dtype=torch.float32),
                      group_ids=torch.tensor([r[4] for r in rows], dtype=torch.long))


def last_token_rewards(batch: TrainBatch, seq_rewards: torch.Tensor) -> torch.Tensor:
    """[B] sequence rewards placed on each sequence's last response position -> [B, T] (for GAE)."""
    out = torch.zeros(batch.response_mask.shape, dtype=torch.float32, device=seq_rewards.device)
    lengths = batch.response_mask.sum(-1)  # [B]
    first = batch.response_mask.float().argmax(-1)  # [B]
    rows = torch.nonzero(lengths > 0).squeeze(-1)
    out[rows, first[rows] + lengths[rows] - 1] = seq_rewards[rows]
    return out
