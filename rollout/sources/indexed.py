"""What every finite prompt source shares: rendering rows into prompt text, dropping prompts too long for the
context at load time, a seeded held-out split, and reading epoch after epoch with a cursor.

Each worker reads its own share of the training rows (row order position % num_workers == worker_id), in a fresh
seeded order each epoch, so that workers never hand out the same prompt twice within an epoch. `state()` and
`restore()` carry the cursor (epoch, position) through a checkpoint.
"""
from __future__ import annotations

import logging
import random
from typing import Any, Optional

from rollout.config import DataConfig
from rollout.prompts import DataError, Prompt, SourceContext

log = logging.getLogger("slipstream.data")


def render_prompt(row: dict, data: DataConfig, tokenizer: Optional[Any], where: str) -> str:
    """The text the engine sees for one row: the template (or the prompt_key column), then the chat template."""
    if data.template:
        try:
            text = data.template.format_map(row)
        except KeyError as e:
            raise DataError(f"{where}: data.template uses {{{e.args[0]}}}, which is not a column; columns: "
                            f"{', '.join(row)}") from e
    else:
        if data.prompt_key not in row:
            raise DataError(f"{where}: no column data.prompt_key={data.prompt_key!r}; columns: {', '.join(row)}. "
                            f"Set data.prompt_key, or data.template with {{column}} placeholders")
        text = row[data.prompt_key]
    messages = text if isinstance(text, list) else None  # a conversation: [{"role": ..., "content": ...}]
    if messages is None and not isinstance(text, str):
        raise DataError(f"{where}: data.prompt_key={data.prompt_key!r} holds a {type(text).__name__}, not a string "
                        f"or a list of chat messages")
    if not (data.chat_template or messages is not None):
        return text
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise DataError(f"{where}: a chat prompt needs the model's chat template, and its tokenizer has none; use "
                        f"data.chat_template=false with a base model (and data.template for the wording)")
    messages = messages if messages is not None else [{"role": "user", "content": text}]
    if data.system_prompt:
        messages = [{"role": "system", "content": data.system_prompt}] + list(messages)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def json_safe(value):
    """Fields travel to the reward inside groups in the buffer (msgpack): tuples become lists, and anything that is
    not a number, string, bool, None, list or dict (a date, a decimal) becomes its string."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def build_prompts(rows: list[dict], data: DataConfig, ctx: SourceContext, where: str) -> list[Prompt]:
    """Rows -> prompts; those longer than ctx.max_prompt_tokens are dropped with one warning."""
    prompts = []
    for i, row in enumerate(rows):
        text = render_prompt(row, data, ctx.tokenizer, f"{where}, row {i}")
        keep = data.fields or [k for k in row if k != data.prompt_key]
        missing = [k for k in keep if k not in row]
        if missing:
            raise DataError(f"{where}: data.fields names {', '.join(missing)}, not columns of the data set "
                            f"(columns: {', '.join(row)})")
        prompt_id = str(row[data.id_key]) if data.id_key else str(i)
        prompts.append(Prompt(prompt_id, text, {k: json_safe(row[k]) for k in keep}))
    if ctx.tokenizer is not None and ctx.max_prompt_tokens > 0:
        lengths = [len(ids) for ids in ctx.tokenizer([p.text for p in prompts], add_special_tokens=False)["input_ids"]]
        kept = [p for p, n in zip(prompts, lengths) if n <= ctx.max_prompt_tokens]
        if len(kept) < len(prompts):
            log.warning("%s: %d of %d prompts are longer than %d tokens (rollout.max_model_len - "
                        "rollout.max_new_tokens) and were dropped; raise rollout.max_model_len or shorten them",
                        where, len(prompts) - len(kept), len(prompts), ctx.max_prompt_tokens)
        prompts = kept
    if not prompts:
        raise DataError(f"{where}: no prompts left (the data set is empty, or every prompt is too long)")
    return prompts


def split_held_out(prompts: list[Prompt], held_out_size: int) -> tuple[list[Prompt], list[Prompt]]:
    """(training, held-out): held_out_size rows drawn by a fixed seed, the same for every run seed and worker."""
    if held_out_size >= len(prompts):
        raise DataError(f"data.held_out_size={held_out_size} leaves no training prompts of {len(prompts)}")
    order = list(range(len(prompts)))
    random.Random("held-out").shuffle(order)
    held = set(order[:held_out_size])
    return [p for i, p in enumerate(prompts) if i not in held], [prompts[i] for i in sorted(held)]


class IndexedSource:
    """A PromptSource over a finite list of prompts."""

    def __init__(self, train: list[Prompt], held_out: list[Prompt], ctx: SourceContext, shuffle: bool = True):
        self._train, self._held_out = train, held_out
        self.ctx, self.shuffle = ctx, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> list[int]:
        order = list(range(len(self._train)))
        if self.shuffle:
            random.Random(f"{self.ctx.seed}-{self.epoch}").shuffle(order)  # all workers agree on the order
        share = order[self.ctx.worker_id::self.ctx.num_workers]
        return share or order  # more workers than rows: everyone reads everything

    def next(self, n: int) -> list[Prompt]:
        out = []
        while len(out) < n:
            if self.position >= len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._epoch_order()
            out.append(self._train[self._order[self.position]])
            self.position += 1
        return out

    def held_out(self) -> list[Prompt]:
        return self._held_out

    def prompts(self) -> list[Prompt]:
        """Every training prompt, in the data's order (an evaluation set reads the whole file)."""
        return list(self._train)

    def __len__(self) -> int:
        return len(self._train)

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order()
