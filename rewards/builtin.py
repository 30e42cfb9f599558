"""Built-in rewards."""
from __future__ import annotations

import re

from rewards.registry import register


def normalize_answer(text: str) -> str:
    """Strip surrounding whitespace and leading zeros of an integer answer ('007' == '7')."""
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        sign = "-" if text.startswith("-") else ""
        return sign + (text.lstrip("-").lstrip("0") or "0")
    return text


@register("exact_answer")
def exact_answer(prompt: str, completion: str, *, answer: str, **_: object) -> float:
    """1.0 when the completion, normalised, equals the ground-truth `answer` field, else 0.0."""
    return 1.0 if normalize_answer(completion) == normalize_answer(str(answer)) else 0.0
