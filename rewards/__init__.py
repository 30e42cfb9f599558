"""Reward plugins: a reward is a plain function `(prompt: str, completion: str, **fields) -> float | RewardResult`.

Name one in config by registered name (`@register("math")`), dotted path (`my_pkg.scoring:reward`) or an
installed package's entry point (group `slipstream.rewards`); combine several with weights in
`RewardConfig`. `build_scorer(cfg).score_groups(...)` runs them safely (time limits, failure policy, a
process pool for cpu_heavy rewards); `check_config(cfg)` validates without starting anything.
See docs/rewards.md.

Importing this package is cheap: math-verify and the sandbox load on first use.
"""
from rewards.config import RewardConfig, RewardSpec, SandboxConfig
from rewards.registry import (ENTRY_POINT_GROUP, entry_point_names, register, registered_names, required_fields,
                              resolve_reward)
from rewards.schema import FAILURE_KINDS, GroupScore, GroupToScore, RewardError, RewardResult, SampleScore
from rewards.scoring import Scorer, build_scorer, check_config, reward_metrics

__all__ = [
    "ENTRY_POINT_GROUP", "FAILURE_KINDS", "GroupScore", "GroupToScore", "RewardConfig", "RewardError",
    "RewardResult", "RewardSpec", "SampleScore", "SandboxConfig", "Scorer", "build_scorer", "check_config",
    "entry_point_names", "fields_needed", "register", "registered_names", "required_fields", "resolve_reward",
    "reward_metrics",
]


def fields_needed(cfg: RewardConfig) -> dict[str, list[str]]:
    """Per configured reward (by name), the data-set fields it needs: checked against the data before a run."""
    return {spec.name: required_fields(resolve_reward(spec.name), spec.kwargs or {}) for spec in cfg.rewards}
