"""Typed configuration of the rollout side (the `rollout:` and `task:` sections)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GvmConfig:
    """Gradient-variance-aware allocation (rollout.allocation=gvm); see rollout/allocation.py and docs."""
    rule: str = "paper"  # paper: G/sqrt(p + alpha/p^(beta-1)); neyman: G*sqrt(p(1-p)) (rollout/allocation.py)
    alpha: float = 1e-3  # paper default
    beta: float = 2.0  # paper default
    n_min: int = 2  # GRPO-style advantages need >= 2 samples per group
    n_max: int = 32
    prior_a: float = 1.0  # Beta prior on the pass rate: a prompt never seen solved still gets explored
    prior_b: float = 1.0
    pilot_size: int = 4  # samples for a prompt never seen; trained on like any other group
    decay: float = 0.9  # recency weight of pass statistics per update
    grad_mix: float = 0.5  # EMA weight of a new gradient-norm estimate


@dataclass
class RolloutConfig:
    num_workers: int = 1  # rollout workers, one engine each
    group_size: int = 8  # samples per prompt (n)
    max_new_tokens: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    groups_per_call: int = 16  # prompts per engine.generate call; weights change only between calls
    max_model_len: int = 64
    dtype: str = "float32"
    gpu_memory_utilization: float = 0.5  # GPU only
    enforce_eager: bool = False  # GPU only: True skips CUDA graphs (faster start, slower decoding); CPU is eager
    tensor_parallel_size: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    kv_cache_gib: int = 1  # CPU only (VLLM_CPU_KVCACHE_SPACE)
    idle_sleep_s: float = 0.02  # poll interval while the admission guard says no
    # Filters. Dropped groups give their admission slot back, so generators keep sampling until a batch is full.
    drop_zero_variance_groups: bool = False  # all rewards equal -> zero GRPO advantage: do not train on it
    max_pass_rate: float = 1.0  # stop sampling prompts whose pass rate is above this (1.0 = never)
    pass_rate_min_attempts: int = 16  # ... once they have at least this many attempts
    pass_threshold: float = 1.0  # a sample with reward >= this counts as a pass in the per-prompt statistics
    # Samples per prompt: "uniform" (group_size each) or "gvm" (the same budget per generate call, split by
    # GVM from the shared per-prompt statistics). Admission counts groups either way.
    allocation: str = "uniform"
    gvm: GvmConfig = field(default_factory=GvmConfig)


@dataclass
class TaskConfig:
    name: str = "addition"
    num_digits: int = 2
    # 1,000 held-out problems: one evaluation's sd is about 1.4 points at 25% success. Under operands=digits they
    # hold (nearly) all 100 one-digit pairs, so none of those can be memorised from the training stream.
    held_out_size: int = 1000
    max_operands: int = 2  # > 2: chain of running sums, long-tailed response lengths (needs a model built for it)
    operands_decay: float = 0.5  # P(k operands) ~ decay^(k-2)
    operands: str = "digits"  # digits | uniform: how operand values are drawn (rollout/prompts.py)
    pool_size: int = 0  # > 0: a fixed training set of this many problems, visited epoch by epoch (0: endless)

