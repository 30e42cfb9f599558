"""The typed Hydra config tree: one dataclass per section, registered with Hydra's ConfigStore.

A misspelt key is an error (structured configs are in struct mode). `validate` checks values and paths
before anything heavy starts, and names the fix in its message.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional

import buffer.api
import rollout.api
import trainer.api
from buffer.api import BufferConfig
from launcher import eval_sets
from rewards import RewardConfig, RewardError, RewardSpec, check_config, fields_needed
from rollout.api import DataConfig, RolloutConfig, TaskConfig
from trainer.api import TrainerConfig


@dataclass
class ModelConfig:
    # A Hugging Face model directory (config.json, weights, tokenizer). The tiny demo model is built by
    # `python scripts/build_tiny_model.py --out .cache/tiny-model`.
    path: str = ".cache/tiny-model"


@dataclass
class WandbConfig:
    """Optional Weights & Biases logging beside metrics.jsonl and TensorBoard (pip install 'slipstream[wandb]')."""
    project: str = ""  # empty: off
    mode: str = "offline"  # offline (no network; `wandb sync` later) | online
    entity: str = ""  # team or user; empty: the default of the logged-in account


@dataclass
class RunConfig:
    name: str = "slipstream"  # the run directory is runs/<name>/<time>; also the default Redis key prefix
    seed: int = 0  # seeds the whole pipeline: engines, trainer, data order, the held-out split of the addition task
    total_steps: int = 100  # trainer steps (one optimizer step each)
    max_minutes: float = 0.0  # stop after this wall-clock (0 = no limit); a final evaluation follows
    eval_every: int = 10  # held-out evaluation every K trainer steps (and before the first, after the last)
    eval_max_new_tokens: int = 8  # new tokens per held-out answer
    eval_samples: int = 4  # samples per held-out prompt for the sampled success at rollout.temperature (0 = off)
    batch_timeout_s: float = 600.0  # give up if no batch arrives for this long (generators stuck or dead)
    call_timeout_s: float = 1800.0  # any one call to the trainer ranks or a worker (a phase, a sync, an evaluation)
    ray_address: Optional[str] = None  # None: start a local Ray instance; "auto" or host:port: join a cluster
    # the parts' placement groups must be placed within this long, else the run fails naming the resources it
    # wanted and found (launcher/placement.py)
    placement_timeout_s: float = 120.0
    tensorboard: bool = True  # TensorBoard events under <run dir>/tensorboard (metrics.jsonl is always written)
    checkpoint_every: int = 50  # a checkpoint every K steps (0: only at the end) under <run dir>/checkpoints
    keep_checkpoints: int = 2  # the newest K are kept
    resume: str = ""  # a run directory (its newest checkpoint) or "latest" (the newest under runs/): continue it
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class EvalSetConfig:
    name: str = ""  # metrics are eval/<name>/mean@k and eval/<name>/pass@k
    data: DataConfig = field(default_factory=lambda: DataConfig(source="files"))  # like data:; the whole set is read
    rewards: list[RewardSpec] = field(default_factory=list)  # its own rewards (empty: the training reward)
    samples: int = 1  # k samples per prompt (pass@k, mean@k)
    temperature: float = 0.0  # 0: greedy (then samples must be 1); > 0: seeded sampling
    max_new_tokens: int = 0  # 0: run.eval_max_new_tokens
    limit: int = 0  # evaluate the first N prompts only (0: all)


@dataclass
class EvalConfig:
    """Evaluation sets beside the held-out success, every run.eval_every steps on rollout worker 0 (docs/data.md)."""
    sets: list[EvalSetConfig] = field(default_factory=list)  # none by default


@dataclass
class SlipstreamConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def config_record(cfg: SlipstreamConfig) -> dict:
    """The config as a dict for metrics (W&B) and checkpoints, with buffer.redis_url's password redacted."""
    from buffer.api import redact

    out = dataclasses.asdict(cfg)
    if out["buffer"]["redis_url"]:
        out["buffer"]["redis_url"] = redact(out["buffer"]["redis_url"])
    return out


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
            # a free-form dict[str, ...] field (rollout.resources, data.task_kwargs) has no keys to check
            elif OmegaConf.is_dict(node[k]) and OmegaConf.is_dict(ref[k]) and OmegaConf.get_type(ref[k]) is not dict:
                yield from unknown(node[k], ref[k], f"{path}{k}.")

    bad = list(unknown(raw, schema, ""))
    if bad:
        raise ConfigError(f"unknown config key(s): {', '.join(bad)}; see launcher/config.py for the schema")
    return OmegaConf.to_object(raw)


def validate(cfg: SlipstreamConfig) -> None:
    """Each section checks itself next to its owner; this adds the checks across sections. Raises ConfigError
    listing every problem, each naming the key and the fix."""
    problems = buffer.api.problems(cfg.buffer) + rollout.api.problems(cfg.rollout, cfg.data) \
        + trainer.api.problems(cfg.trainer) + eval_sets.problems(cfg) + _across_sections(cfg)
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
    try:
        check_config(cfg.reward)  # imports and checks every reward; starts nothing
    except RewardError as e:
        raise ConfigError(str(e)) from e


def check_data(cfg: SlipstreamConfig) -> list[eval_sets.EvalSet]:
    """Load the prompts as worker 0 would, before any engine starts, and check that every reward finds its fields:
    a missing file, key or field is an error here, not a crash in a worker. Returns the evaluation sets, loaded."""
    try:
        source = rollout.api.load_prompt_source(cfg.data, cfg.task, model_path=cfg.model.path,
                                                max_model_len=cfg.rollout.max_model_len,
                                                max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.run.seed)
        rollout.api.check_fields(source, fields_needed(cfg.reward), f"data.source={cfg.data.source!r}")
        return eval_sets.load_eval_sets(cfg)
    except rollout.api.DataError as e:
        raise ConfigError(f"invalid data: {e}") from e


def _across_sections(cfg: SlipstreamConfig) -> list[str]:
    from launcher import placement  # imports this module

    path, r, t = cfg.model.path, cfg.rollout, cfg.trainer
    checks = [
        (os.path.isfile(os.path.join(path, "config.json")),
         f"model.path={path!r} is not a Hugging Face model directory (no config.json). Point it at one, or build "
         f"the tiny model: python scripts/build_tiny_model.py --out {path}"),
        (t.mini_batches_per_step <= cfg.buffer.groups_per_step,
         f"trainer.mini_batches_per_step={t.mini_batches_per_step}: at most buffer.groups_per_step="
         f"{cfg.buffer.groups_per_step} (a mini-batch holds whole groups)"),
        (cfg.run.eval_every >= 1, "run.eval_every must be >= 1"),
        (cfg.run.wandb.mode in ("offline", "online"), f"run.wandb.mode={cfg.run.wandb.mode!r}: offline or online"),
    ]
    if r.allocation == "gvm":
        critic = t.advantage.name in trainer.api.ADVANTAGES and trainer.api.uses_critic(
            trainer.api.ADVANTAGES.resolve(t.advantage.name))
        checks += [
            (r.gvm.n_min >= 2 or critic,
             f"rollout.gvm.n_min={r.gvm.n_min}: group-based advantages need >= 2 samples per group"),
            (t.grad_norm_estimate != "none",
             "rollout.allocation=gvm needs gradient-norm estimates: set trainer.grad_norm_estimate=proxy or exact"),
        ]
    return [msg for ok, msg in checks if not ok] + placement.problems(cfg)
