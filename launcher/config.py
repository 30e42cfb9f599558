"""The typed Hydra config tree: one dataclass per section, registered with Hydra's ConfigStore.

A misspelt key is an error (structured configs are in struct mode). `validate` checks values and paths
before anything heavy starts, and names the fix in its message.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from buffer.config import BufferConfig
from rewards.config import RewardConfig
from rollout.allocation import RULES
from rollout.config import RolloutConfig, TaskConfig
from trainer.config import TrainerConfig


@dataclass
class ModelConfig:
    # A Hugging Face model directory (config.json, weights, tokenizer). The tiny demo model is built by
    # `python scripts/build_tiny_model.py --out .cache/tiny-model`.
    path: str = ".cache/tiny-model"


@dataclass
class RunConfig:
    name: str = "slipstream"
    seed: int = 0
    total_steps: int = 100  # trainer steps (one optimizer step each)
    max_minutes: float = 0.0  # stop after this wall-clock (0 = no limit); a final evaluation follows
    eval_every: int = 10  # held-out evaluation every K trainer steps (and before the first, after the last)
    eval_max_new_tokens: int = 8
    eval_samples: int = 4  # samples per held-out prompt for the sampled success at rollout.temperature (0 = off)
    batch_timeout_s: float = 600.0  # give up if no batch arrives for this long (generators stuck or dead)
    ray_address: Optional[str] = None  # None: start a local Ray instance; "auto" or host:port: join a cluster
    tensorboard: bool = True


@dataclass
class SlipstreamConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="slipstream_schema", node=SlipstreamConfig)


class ConfigError(ValueError):
    pass


def to_typed(raw) -> SlipstreamConfig:
    """DictConfig from Hydra -> dataclasses. Rejects keys the schema lacks: Hydra's `+key=value` adds them
    even in struct mode, and OmegaConf.to_object would then drop them without a word."""
    from omegaconf import OmegaConf

    schema = OmegaConf.structured(SlipstreamConfig)

    def unknown(node, ref, path):
        for k in node:
            if k == "hydra" and not path:
                continue
            if k not in ref:
                yield f"{path}{k}"
            elif OmegaConf.is_dict(node[k]) and OmegaConf.is_dict(ref[k]):
                yield from unknown(node[k], ref[k], f"{path}{k}.")

    bad = list(unknown(raw, schema, ""))
    if bad:
        raise ConfigError(f"unknown config key(s): {', '.join(bad)}; see launcher/config.py for the schema")
    return OmegaConf.to_object(raw)


def validate(cfg: SlipstreamConfig) -> None:
    """Value checks that a schema cannot express; raises ConfigError naming the key and the fix."""
    problems = []

    def need(ok: bool, msg: str) -> None:
        if not ok:
            problems.append(msg)

    path = cfg.model.path
    need(os.path.isfile(os.path.join(path, "config.json")),
         f"model.path={path!r} is not a Hugging Face model directory (no config.json). Point it at one, or "
         f"build the tiny model: python scripts/build_tiny_model.py --out {path}")
    need(cfg.buffer.eta >= 0, f"buffer.eta={cfg.buffer.eta}: must be >= 0 (0 = synchronous)")
    need(cfg.rollout.group_size >= 2, f"rollout.group_size={cfg.rollout.group_size}: GRPO advantages need >= 2")
    need(cfg.rollout.num_workers >= 1, "rollout.num_workers must be >= 1")
    need(cfg.rollout.max_new_tokens < cfg.rollout.max_model_len,
         f"rollout.max_new_tokens={cfg.rollout.max_new_tokens} leaves no room for a prompt in "
         f"rollout.max_model_len={cfg.rollout.max_model_len}")
    need(cfg.rollout.temperature > 0, "rollout.temperature must be > 0 for RL sampling (greedy gives no spread)")
    need(cfg.rollout.top_p == 1.0,
         f"rollout.top_p={cfg.rollout.top_p}: the trainer scores tokens under the full softmax(logits / temperature), "
         f"not a top-p nucleus, so its ratios to the engine's log-probs would compare different distributions; "
         f"use rollout.top_p=1.0 (and rollout.temperature to sharpen sampling)")
    need(cfg.trainer.groups_per_step >= 1, "trainer.groups_per_step must be >= 1")
    need(cfg.trainer.num_ranks >= 1, "trainer.num_ranks must be >= 1")
    need(cfg.trainer.micro_batches >= 1, "trainer.micro_batches must be >= 1")
    need(cfg.trainer.ppo_epochs >= 1, f"trainer.ppo_epochs={cfg.trainer.ppo_epochs}: must be >= 1")
    need(1 <= cfg.trainer.mini_batches_per_step <= cfg.trainer.groups_per_step,
         f"trainer.mini_batches_per_step={cfg.trainer.mini_batches_per_step}: must be between 1 and "
         f"trainer.groups_per_step={cfg.trainer.groups_per_step} (a mini-batch holds whole groups)")
    need(cfg.trainer.zero_stage in (0, 1, 2, 3), f"trainer.zero_stage={cfg.trainer.zero_stage}: one of 0, 1, 2, 3")
    need(cfg.trainer.lr > 0, "trainer.lr must be > 0")
    _validate_algorithms(cfg, need)
    need(cfg.trainer.weight_transport in ("store",),
         f"trainer.weight_transport={cfg.trainer.weight_transport!r}: available: store")
    need(cfg.trainer.dtype in ("float32", "bfloat16"), "trainer.dtype: float32 or bfloat16")
    need(cfg.buffer.max_in_flight >= 1 and cfg.buffer.max_buffered >= cfg.trainer.groups_per_step,
         f"buffer.max_buffered={cfg.buffer.max_buffered} must hold at least one step "
         f"(trainer.groups_per_step={cfg.trainer.groups_per_step}) and buffer.max_in_flight >= 1")
    need(cfg.task.name == "addition", f"task.name={cfg.task.name!r}: available: addition")
    need(0.0 < cfg.rollout.max_pass_rate <= 1.0, "rollout.max_pass_rate must be in (0, 1] (1 = no filter)")
    _validate_allocation(cfg, need)
    need(cfg.run.eval_every >= 1, "run.eval_every must be >= 1")
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
    from rewards import RewardError, check_config

    try:
        check_config(cfg.reward)  # imports and checks every reward; starts nothing
    except RewardError as e:
        raise ConfigError(str(e)) from e


def _validate_algorithms(cfg: SlipstreamConfig, need) -> None:
    from trainer.losses import AGGREGATIONS, POLICY_LOSSES

    loss, adv = cfg.trainer.loss, cfg.trainer.advantage
    need(loss.name in POLICY_LOSSES, f"trainer.loss.name={loss.name!r}: one of {', '.join(POLICY_LOSSES)}")
    need(loss.aggregation in AGGREGATIONS,
         f"trainer.loss.aggregation={loss.aggregation!r}: one of {', '.join(AGGREGATIONS)}")
    need(loss.aggregation != "constant" or loss.aggregation_constant > 0,
         "trainer.loss.aggregation=constant needs trainer.loss.aggregation_constant > 0 (e.g. rollout.max_new_tokens)")
    need(loss.kl_estimator in ("k1", "k3"), f"trainer.loss.kl_estimator={loss.kl_estimator!r}: one of k1, k3")
    need(loss.kl_in in ("loss", "reward"), f"trainer.loss.kl_in={loss.kl_in!r}: one of loss, reward")
    need(loss.kl_coef >= 0 and loss.entropy_coef >= 0, "trainer.loss.kl_coef and entropy_coef must be >= 0")
    need(loss.dual_clip == 0 or loss.dual_clip > 1, f"trainer.loss.dual_clip={loss.dual_clip}: 0 (off) or > 1")
    need(adv.name in ("grpo", "rloo", "batch", "gae"),
         f"trainer.advantage.name={adv.name!r}: one of grpo, rloo, batch, gae")
    need(adv.batch_center in ("group", "batch"), "trainer.advantage.batch_center: group or batch")


def _validate_allocation(cfg: SlipstreamConfig, need) -> None:
    r, g = cfg.rollout, cfg.rollout.gvm
    need(r.allocation in ("uniform", "gvm"), f"rollout.allocation={r.allocation!r}: one of uniform, gvm")
    need(cfg.trainer.prox_forward in ("grad_pass", "separate"),
         f"trainer.prox_forward={cfg.trainer.prox_forward!r}: one of grad_pass, separate")
    need(cfg.trainer.grad_norm_estimate in ("none", "proxy", "exact"),
         f"trainer.grad_norm_estimate={cfg.trainer.grad_norm_estimate!r}: one of none, proxy, exact")
    need(cfg.trainer.grad_norm_estimate != "exact" or cfg.trainer.zero_stage < 3,
         "trainer.grad_norm_estimate=exact needs full parameters on each rank: use trainer.zero_stage <= 2 or proxy")
    if r.allocation == "gvm":
        need(g.rule in RULES, f"rollout.gvm.rule={g.rule!r}: one of {', '.join(RULES)}")
        need(g.n_min >= 2 or cfg.trainer.advantage.name == "gae",
             f"rollout.gvm.n_min={g.n_min}: group-based advantages need >= 2 samples per group")
        need(g.n_min <= min(r.group_size, g.pilot_size) and g.n_max >= r.group_size,
             f"rollout.gvm needs n_min <= min(group_size, pilot_size) and n_max >= group_size "
             f"(n_min={g.n_min}, pilot_size={g.pilot_size}, group_size={r.group_size}, n_max={g.n_max})")
        need(cfg.trainer.grad_norm_estimate != "none",
             "rollout.allocation=gvm needs gradient-norm estimates: set trainer.grad_norm_estimate=proxy or exact")
