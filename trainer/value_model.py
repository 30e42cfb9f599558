"""The critic for GAE: a causal LM's backbone with a scalar head."""
from __future__ import annotations

import torch


class ValueModel(torch.nn.Module):
    """A causal LM's backbone with a scalar head: V(prefix) at every position. Head starts at zero."""

    def __init__(self, path: str, dtype: torch.dtype):
        super().__init__()
        from transformers import AutoModel

        self.backbone = AutoModel.from_pretrained(path, dtype=dtype)
        self.head = torch.nn.Linear(self.backbone.config.hidden_size, 1, dtype=dtype)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden).squeeze(-1).float()  # [B, T+1]
