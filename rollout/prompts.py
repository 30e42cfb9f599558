"""Prompts and the prompt-source registry. A prompt source hands out `Prompt`s (rollout.api.PromptSource); dataset
fields ride along to the reward function as keyword arguments.

Sources register a factory `(data: DataConfig, task: TaskConfig, ctx: SourceContext) -> PromptSource` under the
name `data.source` gives: `addition` (rollout/tasks/addition.py), `files` and `reasoning_gym` (rollout/sources/).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Optional

from plugins import Registry


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    text: str
    fields: dict = field(default_factory=dict, hash=False, compare=False)  # e.g. {"answer": "168"}


@dataclass(frozen=True)
class SourceContext:
    """What a source may need beyond its config: who reads it, and how prompts become tokens."""
    seed: int = 0
    worker_id: int = 0
    num_workers: int = 1  # workers read disjoint shares of a finite data set
    tokenizer: Optional[Any] = None  # a Hugging Face tokenizer (chat template, prompt lengths); None: not needed
    max_prompt_tokens: int = 0  # longer prompts are dropped when the data is loaded; 0: no limit


class DataError(ValueError):
    """The data cannot be used as configured; the message names the file, the key and the fix."""


PROMPT_SOURCES: Registry = Registry("prompt source", "data.source", builtin_modules=(
    "rollout.tasks.addition", "rollout.sources.files", "rollout.sources.reasoning_gym"))


@functools.lru_cache(maxsize=4)
def _tokenizer(model_path: str):
    """One tokenizer per model for the training data and every evaluation set (it only reads: templates, lengths)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def load_prompt_source(data, task, *, model_path: str, max_model_len: int, max_new_tokens: int, seed: int,
                       worker_id: int = 0, num_workers: int = 1):
    """The prompt source `data.source` names, for one worker: with the model's tokenizer (chat template, prompt
    lengths) and the context's room for a prompt. Raises DataError naming the file, the key and the fix."""
    ctx = SourceContext(seed=data.seed if data.seed >= 0 else seed, worker_id=worker_id, num_workers=num_workers,
                        tokenizer=_tokenizer(model_path),
                        max_prompt_tokens=max_model_len - max_new_tokens)
    return PROMPT_SOURCES.resolve(data.source)(data, task, ctx)


def check_fields(source, needed: dict[str, list[str]], where: str) -> None:
    """Every reward finds the fields it needs in the source's prompts (training and held-out). It draws one training
    prompt, so it is meant for a source built for the check."""
    for prompts, kind in ((source.next(1), "training"), (source.held_out()[:1], "held-out")):
        if not prompts:
            continue
        have = set(prompts[0].fields)
        for reward, fields in needed.items():
            missing = [f for f in fields if f not in have]
            if missing:
                raise DataError(f"{where}: reward {reward!r} needs the field(s) {', '.join(missing)}, which the "
                                f"{kind} prompts lack (their fields: {', '.join(sorted(have)) or 'none'}); add the "
                                f"column to the data set or to data.fields, or use another reward")
