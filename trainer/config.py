"""Typed configuration of the trainer (the `trainer:` section). docs/algorithms.md explains each choice."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LossConfig:
    name: str = "decoupled_ppo"  # ppo_clip | decoupled_ppo | tis | cispo | gspo
    eps_low: float = 0.2
    eps_high: float = 0.28  # clip-higher (DAPO): a wider upper bound keeps exploration alive
    dual_clip: float = 0.0  # c > 1 enables dual-clip for negative advantages (0 = off)
    max_behaviour_weight: float = 5.0  # decoupled_ppo: tokens with pi_prox/mu above this are masked out (AReaL)
    tis_cap: float = 2.0  # tis: pi_prox/mu truncated at this
    aggregation: str = "token_mean"  # token_mean | seq_mean_token_mean | constant (Dr. GRPO)
    aggregation_constant: float = 0.0  # constant mode: the divisor per sequence (use max_new_tokens); > 0
    entropy_coef: float = 0.0  # entropy bonus (0 = off)
    kl_coef: float = 0.0  # KL to the frozen initial policy (0 = off: no reference model is loaded)
    kl_estimator: str = "k3"  # k1 | k3
    kl_in: str = "loss"  # loss (penalty term) | reward (subtracted from each sequence's reward)


@dataclass
class AdvantageConfig:
    name: str = "grpo"  # grpo | rloo | batch | gae (gae trains a value model: see CriticConfig)
    scale_by_std: bool = True  # grpo: divide group-centred rewards by the group's std
    batch_center: str = "group"  # batch: centre on the group mean (ScaleRL) or the batch mean
    gamma: float = 1.0  # gae
    lam: float = 0.95  # gae


@dataclass
class CriticConfig:
    lr: float = 1e-4
    value_clip: float = 0.2  # PPO value clipping around the value before the step (0 = off)


@dataclass
class TrainerConfig:
    groups_per_step: int = 16  # B: groups per optimizer step
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    zero_stage: int = 2
    num_ranks: int = 1
    micro_batches: int = 1  # micro-batches per rank per optimizer step (gradient accumulation)
    # PPO mini-batch epochs: each popped batch is cut into mini_batches_per_step mini-batches (whole groups) and
    # visited ppo_epochs times, one optimizer step per mini-batch. pi_prox is the weights before the first of them;
    # the policy version still bumps once per popped batch.
    ppo_epochs: int = 1
    mini_batches_per_step: int = 1
    cpus_per_rank: float = 1.0
    gpus_per_rank: float = 0.0
    dtype: str = "float32"  # float32 | bfloat16 (GPU)
    weight_transport: str = "store"  # store (Ray object store); nccl comes later behind the same interface
    # Per-prompt gradient-norm estimate written back for GVM allocation: none | proxy | exact (trainer/grad_norms.py)
    grad_norm_estimate: str = "none"
    # pi_prox: "grad_pass" takes it from the gradient pass (exact: the weights change only after the last
    # micro-batch); "separate" runs a no-grad forward first (a third more compute; scripts/bench/prox_forward.py)
    prox_forward: str = "grad_pass"
    accept_threshold: float = 1.0  # samples with reward >= this are "accepted" for the estimate (paper: correct)
    loss: LossConfig = field(default_factory=LossConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
