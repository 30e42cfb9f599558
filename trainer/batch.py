"""Turn groups from the buffer into padded training tensors. Pure: numpy/torch only.

Layout per sequence: prompt tokens then response tokens, right-padded. Position t of the shifted tensors
scores token t+1, so the response token at absolute index j sits at shifted position j-1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from buffer.schema import Group
from trainer.algorithms import grpo_advantages


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # long [B, T+1]
    attention_mask: torch.Tensor  # long [B, T+1]
    targets: torch.Tensor  # long [B, T], input_ids shifted left by one
    response_mask: torch.Tensor  # bool [B, T], True where targets are response tokens
    behaviour_logp: torch.Tensor  # float32 [B, T], engine log-probs at response positions, 0 elsewhere
    advantages: torch.Tensor  # float32 [B, T], the sequence's advantage on its response positions

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def select(self, rows: slice) -> "TrainBatch":
        return TrainBatch(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


def build_train_batch(groups: list[Group], *, scale_adv_by_std: bool, pad_id: int = 0) -> TrainBatch:
    """Groups -> one padded batch with GRPO advantages computed per group."""
    rows = []
    for g in groups:
        adv = grpo_advantages(torch.tensor(g.rewards), scale_by_std=scale_adv_by_std)  # [G]
        for s, a in zip(g.samples, adv.tolist()):
            rows.append((s.prompt_ids, s.response_ids, s.behaviour_logprobs, a))
    width = max(len(p) + len(r) for p, r, _, _ in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    resp_mask = torch.zeros((n, width - 1), dtype=torch.bool)
    behaviour = torch.zeros((n, width - 1), dtype=torch.float32)
    advantages = torch.zeros((n, width - 1), dtype=torch.float32)
    for i, (p, r, lp, a) in enumerate(rows):
        P, R = len(p), len(r)
        input_ids[i, :P + R] = torch.from_numpy(np.concatenate([p, r]).astype(np.int64))
        attention[i, :P + R] = 1
        resp = slice(P - 1, P - 1 + R)  # shifted positions that predict the response tokens
        resp_mask[i, resp] = True
        behaviour[i, resp] = torch.from_numpy(lp.astype(np.float32))
        advantages[i, resp] = a
    return TrainBatch(input_ids=input_ids, attention_mask=attention, targets=input_ids[:, 1:],
                      response_mask=resp_mask, behaviour_logp=behaviour, advantages=advantages)
