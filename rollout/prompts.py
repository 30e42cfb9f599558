"""Prompts and the prompt-source registry. A prompt source hands out `Prompt`s (rollout.api.PromptSource); dataset
fields ride along to the reward function. Sources register a factory `(task: TaskConfig, *, seed, worker_id)`
under the name that `task.name` gives; the synthetic demo task is rollout/tasks/addition.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from plugins import Registry


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    text: str
    fields: dict = field(default_factory=dict, hash=False, compare=False)  # e.g. {"answer": "168"}


PROMPT_SOURCES: Registry = Registry("prompt source", "task.name", builtin_modules=("rollout.tasks.addition",))
