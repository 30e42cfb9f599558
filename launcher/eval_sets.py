"""Evaluation sets (the `eval:` section): their prompts, loaded by the driver, and their checks before a run."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import rollout.api
from rewards import RewardConfig, RewardError, check_config, fields_needed


@dataclass
class EvalSet:
    name: str
    prompts: list[dict]  # {"text", "fields"}, what RolloutWorker.evaluate_set takes
    reward: RewardConfig | None  # None: the training reward
    samples: int
    temperature: float
    max_new_tokens: int


def problems(cfg) -> list[str]:
    """Value checks of the eval: section (cfg: SlipstreamConfig)."""
    out, names = [], [s.name for s in cfg.eval.sets]
    for i, s in enumerate(cfg.eval.sets):
        where = f"eval.sets[{i}] ({s.name or 'no name'})"
        if not s.name or names.count(s.name) > 1:
            out.append(f"{where}: every evaluation set needs a name of its own (metrics are eval/<name>/...)")
        if s.samples < 1 or s.temperature < 0 or (s.temperature == 0 and s.samples != 1):
            out.append(f"{where}: samples={s.samples}, temperature={s.temperature}: samples >= 1, temperature >= 0, "
                       f"and greedy decoding (temperature 0) gives one sample per prompt")
        if s.rewards:
            try:
                check_config(_reward(cfg, s))
            except RewardError as e:
                out.append(f"{where}: {e}")
    return out


def _reward(cfg, s) -> RewardConfig | None:
    return dataclasses.replace(cfg.reward, rewards=list(s.rewards)) if s.rewards else None


def load_eval_sets(cfg) -> list[EvalSet]:
    """Every set's prompts, read as the training data is (templates, chat template, length filter); raises
    rollout.api.DataError naming the set, the file and the key."""
    out = []
    for s in cfg.eval.sets:
        source = rollout.api.load_prompt_source(s.data, cfg.task, model_path=cfg.model.path,
                                                max_model_len=cfg.rollout.max_model_len,
                                                max_new_tokens=s.max_new_tokens or cfg.run.eval_max_new_tokens,
                                                seed=cfg.run.seed)
        reward = _reward(cfg, s)
        rollout.api.check_fields(source, fields_needed(reward or cfg.reward), f"eval set {s.name!r}")
        prompts = source.held_out() or source.prompts()  # a file's held-out rows if it keeps some, else all
        prompts = prompts[:s.limit] if s.limit else prompts
        out.append(EvalSet(s.name, [{"text": p.text, "fields": p.fields} for p in prompts], reward, s.samples,
                           s.temperature, s.max_new_tokens or cfg.run.eval_max_new_tokens))
    return out
