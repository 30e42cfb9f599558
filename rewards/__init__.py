"""Reward plugins: a reward is a plain function `(prompt: str, completion: str, **fields) -> float`.

Look one up by registered name or by dotted path (`my_pkg.scoring:reward`) with `resolve_reward`.
"""
from rewards.registry import RewardError, register, registered_names, resolve_reward

__all__ = ["RewardError", "register", "registered_names", "resolve_reward"]
