"""Typed configuration of the trainer (the `trainer:` section)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LossConfig:
    name: str = "decoupled_ppo"  # decoupled_ppo | ppo_clip
    eps_low: float = 0.2
    eps_high: float = 0.28
    max_behaviour_weight: float = 5.0  # tokens with pi_prox/mu above this are masked out (AReaL)
    scale_adv_by_std: bool = True  # GRPO: divide group-centred rewards by the group's std


@dataclass
class TrainerConfig:
    groups_per_step: int = 16  # B: groups per optimizer step
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    zero_stage: int = 2
    num_ranks: int = 1
    micro_batches: int = 1  # micro-batches per rank per step (gradient accumulation)
    cpus_per_rank: float = 1.0
    gpus_per_rank: float = 0.0
    dtype: str = "float32"  # float32 | bfloat16 (GPU)
    weight_transport: str = "store"  # store (Ray object store); nccl comes later behind the same interface
    loss: LossConfig = field(default_factory=LossConfig)
