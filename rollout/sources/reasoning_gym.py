"""Procedural reasoning tasks from the `reasoning-gym` package, generated locally (nothing downloaded). Each row
carries the task's `answer` and `metadata`, which the `reasoning_gym` reward hands to the task's own verifier.
Training problems come from (data.size, run.seed), held-out ones from another seed of the same task."""
from __future__ import annotations

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
    # metadata travels to the reward through the buffer's msgpack: keep the JSON-safe part
    return [{"question": e["question"], "answer": str(e["answer"]), "metadata": _json_safe(e["metadata"])}
            for e in dataset]


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


@PROMPT_SOURCES.register("reasoning_gym")
def reasoning_gym_source(data: DataConfig, task: TaskConfig, ctx: SourceContext) -> IndexedSource:
    if data.prompt_key == "prompt" and not data.template:
        data = DataConfig(**{**data.__dict__, "prompt_key": "question"})  # reasoning-gym calls it the question
    where = f"reasoning_gym task {data.task!r}"
    train = build_prompts(generate_rows(data.task, data.size, ctx.seed, dict(data.task_kwargs)), data, ctx, where)
    held_out = []
    if data.held_out_size:  # another seed of the same generator: problems the training stream (almost surely) lacks
        rows = generate_rows(data.task, data.held_out_size, ctx.seed + 1_000_003, dict(data.task_kwargs))
        held_out = [Prompt(f"held-{p.prompt_id}", p.text, p.fields)
                    for p in build_prompts(rows, data, ctx, where + " (held out)")]
    return IndexedSource(train, held_out, ctx, shuffle=data.shuffle)
