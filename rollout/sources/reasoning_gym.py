"""Procedural reasoning tasks from the `reasoning-gym` package, generated locally (nothing downloaded). Each row
carries the task's `answer` and `metadata`, which the `reasoning_gym` reward hands to the task's own verifier.
Training problems come from (data.size, data.seed or run.seed), held-out ones from another seed of the same task,
without those that the training set also holds."""
from __future__ import annotations

import dataclasses

from rollout.config import DataConfig, TaskConfig
from rollout.prompts import PROMPT_SOURCES, DataError, Prompt, SourceContext
from rollout.sources.indexed import IndexedSource, build_prompts


def generate_rows(task: str, size: int, seed: int, kwargs: dict) -> list[dict]:
    import reasoning_gym

    if not task:
        raise DataError("data.source=reasoning_gym needs data.task, e.g. basic_arithmetic")
    try:
        dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **kwargs)
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"data.task={task!r} with data.task_kwargs={kwargs}: {e}") from e
    return [{"question": e["question"], "answer": str(e["answer"]), "metadata": e["metadata"]} for e in dataset]


@PROMPT_SOURCES.register("reasoning_gym")
def reasoning_gym_source(data: DataConfig, task: TaskConfig, ctx: SourceContext) -> IndexedSource:
    if data.prompt_key == "prompt" and not data.template:
        data = dataclasses.replace(data, prompt_key="question")  # reasoning-gym calls it the question
    where = f"reasoning_gym task {data.task!r}"
    train = build_prompts(generate_rows(data.task, data.size, ctx.seed, dict(data.task_kwargs)), data, ctx, where)
    held_out = []
    if data.held_out_size:  # another seed of the same generator, minus any problem the training set also holds
        rows = generate_rows(data.task, data.held_out_size, ctx.seed + 1_000_003, dict(data.task_kwargs))
        seen = {p.text for p in train}
        held_out = [Prompt(f"held-{p.prompt_id}", p.text, p.fields)
                    for p in build_prompts(rows, data, ctx, where + " (held out)") if p.text not in seen]
    return IndexedSource(train, held_out, ctx, shuffle=data.shuffle)
