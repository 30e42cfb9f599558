"""Typed configuration of the rollout side (the `rollout:` and `task:` sections)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RolloutConfig:
    num_workers: int = 1  # rollout workers, one engine each
    group_size: int = 8  # samples per prompt (n)
    max_new_tokens: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    groups_per_call: int = 16  # prompts per engine.generate call; weights change only between calls
    reward: str = "exact_answer"  # registered name or dotted path "pkg.module:function"
    max_model_len: int = 64
    dtype: str = "float32"
    gpu_memory_utilization: float = 0.5  # GPU only
    tensor_parallel_size: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    kv_cache_gib: int = 1  # CPU only (VLLM_CPU_KVCACHE_SPACE)
    idle_sleep_s: float = 0.02  # poll interval while the admission guard says no


@dataclass
class TaskConfig:
    name: str = "addition"
    num_digits: int = 2
    held_out_size: int = 256
