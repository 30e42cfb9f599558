"""Typed configuration of the trainer (the `trainer:` section). docs/algorithms.md explains each choice."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LossConfig:
    name: str = "decoupled_ppo"  # ppo_clip | decoupled_ppo | tis | cispo | gspo, or a dotted path (trainer/api.py)
    eps_low: float = 0.2  # lower clip range of the ratio (1 - eps_low)
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
    name: str = "grpo"  # grpo | rloo | batch | gae (gae trains a value model: see CriticConfig), or a dotted path
    scale_by_std: bool = True  # grpo: divide group-centred rewards by the group's std
    batch_center: str = "group"  # batch: centre on the group mean (ScaleRL) or the batch mean
    gamma: float = 1.0  # gae
    lam: float = 0.95  # gae


@dataclass
class CriticConfig:
    lr: float = 1e-4  # AdamW learning rate of the value model
    value_clip: float = 0.2  # PPO value clipping around the value before the step (0 = off)


@dataclass
class TrainerConfig:
    lr: float = 1e-4  # AdamW learning rate of the policy
    weight_decay: float = 0.0  # AdamW weight decay
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    grad_clip: float = 1.0  # global gradient-norm clip per optimizer step (0 = off)
    zero_stage: int = 2  # DeepSpeed ZeRO stage 0-3 (3 shards parameters; the reference model too)
    num_ranks: int = 1  # trainer ranks (data parallel); N ranks compute what one rank computes
    micro_batches: int = 1  # micro-batches per rank per optimizer step (gradient accumulation)
    # PPO mini-batch epochs: each popped batch (buffer.groups_per_step groups) is cut into mini_batches_per_step
    # mini-batches (whole groups) and visited ppo_epochs times, one optimizer step per mini-batch. pi_prox is the
    # weights before the first of them; the policy version still bumps once per popped batch.
    ppo_epochs: int = 1
    mini_batches_per_step: int = 1  # mini-batches (whole groups) per popped batch, one optimizer step each
    cpus_per_rank: float = 1.0  # Ray CPUs per rank; on CPU also torch's threads
    gpus_per_rank: float = 0.0  # Ray GPUs per rank (0: CPU with gloo; a fraction shares a GPU with an engine)
    # custom Ray resources each rank's placement bundle asks for, e.g. {trainer_node: 1} (docs/cluster.md)
    resources: dict[str, float] = field(default_factory=dict)
    # a rank > 0 that cannot open rank 0's address and port within this long fails naming both (a firewall, a
    # wrong interface: trainer/rendezvous.py)
    rendezvous_timeout_s: float = 300.0
    dtype: str = "float32"  # float32 | bfloat16 (GPU)
    # how new weights reach the engines (trainer/weight_sync.py): store (Ray object store: CPU, tests, small
    # models) | disk (safetensors under weight_dir) | cuda_ipc (engines on the trainer rank's GPU) | nccl
    # (broadcast to engines on other GPUs or nodes) | a dotted path (trainer/api.py, TRANSPORTS)
    weight_transport: str = "store"
    weight_bucket_mb: int = 1024  # weights move in buckets of about this size (ZeRO-3 gathers one at a time)
    weight_sync_timeout_s: float = 120.0  # per update: a receiver that does not acknowledge in time is an error
    weight_dir: str = ""  # disk transport: a directory every node shares (default: <run dir>/weights)
    weight_keep_versions: int = 3  # disk transport: version directories kept
    max_restarts: int = 3  # a rank that dies restarts every rank from the last checkpoint, this many times at most
    # Per-prompt gradient-norm estimate written back for GVM allocation: none | proxy | exact (trainer/grad_norms.py)
    grad_norm_estimate: str = "none"
    # pi_prox: "grad_pass" takes it from the gradient pass (exact: the weights change only after the last
    # micro-batch); "separate" runs a no-grad forward first (a third more compute; scripts/bench/prox_forward.py)
    prox_forward: str = "grad_pass"
    accept_threshold: float = 1.0  # samples with reward >= this are "accepted" for the estimate (paper: correct)
    loss: LossConfig = field(default_factory=LossConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)


def problems(cfg: TrainerConfig) -> list[str]:
    """What is wrong with the trainer: section, each naming the key and the fix (empty: nothing)."""
    from trainer.advantages import ADVANTAGES
    from trainer.losses import AGGREGATIONS, POLICY_LOSSES
    from trainer.weight_sync import TRANSPORTS

    loss, adv = cfg.loss, cfg.advantage
    checks = [
        (cfg.num_ranks >= 1, "trainer.num_ranks must be >= 1"),
        (cfg.micro_batches >= 1, "trainer.micro_batches must be >= 1"),
        (cfg.ppo_epochs >= 1, f"trainer.ppo_epochs={cfg.ppo_epochs}: must be >= 1"),
        (cfg.mini_batches_per_step >= 1, f"trainer.mini_batches_per_step={cfg.mini_batches_per_step}: must be >= 1"),
        (cfg.zero_stage in (0, 1, 2, 3), f"trainer.zero_stage={cfg.zero_stage}: one of 0, 1, 2, 3"),
        (cfg.lr > 0, "trainer.lr must be > 0"),
        (cfg.weight_bucket_mb >= 1, f"trainer.weight_bucket_mb={cfg.weight_bucket_mb}: must be >= 1 (MiB)"),
        (cfg.weight_sync_timeout_s > 0, "trainer.weight_sync_timeout_s must be > 0 (seconds)"),
        (cfg.rendezvous_timeout_s > 0, "trainer.rendezvous_timeout_s must be > 0 (seconds)"),
        (cfg.weight_keep_versions >= 1, "trainer.weight_keep_versions must be >= 1"),
        (cfg.weight_transport not in ("cuda_ipc", "nccl") or cfg.gpus_per_rank > 0,
         f"trainer.weight_transport={cfg.weight_transport} moves weights between GPUs: it needs "
         "trainer.gpus_per_rank > 0 (on CPU use store or disk)"),
        (cfg.dtype in ("float32", "bfloat16"), "trainer.dtype: float32 or bfloat16"),
        (loss.aggregation in AGGREGATIONS,
         f"trainer.loss.aggregation={loss.aggregation!r}: one of {', '.join(AGGREGATIONS)}"),
        (loss.aggregation != "constant" or loss.aggregation_constant > 0,
         "trainer.loss.aggregation=constant needs trainer.loss.aggregation_constant > 0 (e.g. rollout.max_new_tokens)"),
        (loss.kl_estimator in ("k1", "k3"), f"trainer.loss.kl_estimator={loss.kl_estimator!r}: one of k1, k3"),
        (loss.kl_in in ("loss", "reward"), f"trainer.loss.kl_in={loss.kl_in!r}: one of loss, reward"),
        (loss.kl_coef >= 0 and loss.entropy_coef >= 0, "trainer.loss.kl_coef and entropy_coef must be >= 0"),
        (loss.dual_clip == 0 or loss.dual_clip > 1, f"trainer.loss.dual_clip={loss.dual_clip}: 0 (off) or > 1"),
        (adv.batch_center in ("group", "batch"), "trainer.advantage.batch_center: group or batch"),
        (cfg.prox_forward in ("grad_pass", "separate"),
         f"trainer.prox_forward={cfg.prox_forward!r}: one of grad_pass, separate"),
        (cfg.grad_norm_estimate in ("none", "proxy", "exact"),
         f"trainer.grad_norm_estimate={cfg.grad_norm_estimate!r}: one of none, proxy, exact"),
        (cfg.grad_norm_estimate != "exact" or cfg.zero_stage < 3,
         "trainer.grad_norm_estimate=exact needs full parameters on each rank: use trainer.zero_stage <= 2 or proxy"),
    ]
    out = [msg for ok, msg in checks if not ok]
    return out + [p for p in (POLICY_LOSSES.problem(loss.name), ADVANTAGES.problem(adv.name),
                              TRANSPORTS.problem(cfg.weight_transport)) if p]
