"""Built-in cheap rewards: exact match, format, DAPO overlong length penalty.

Each is a plain function that runs in microseconds, so it runs in the caller's process (not cpu_heavy);
exact_answer and length_penalty (bounded work, no user pattern) are marked inline: no watched thread per call.
Configuration errors in their kwargs (a bad regex, max_len <= buffer) fail at start-up through the
`check_kwargs` hooks, not at the first sample. `math` and `python_tests` live in their own modules.
"""
from __future__ import annotations

import re
from typing import Optional

from rewards.registry import register
from rewards.schema import RewardResult


_INTEGER = re.compile(r"-?\d+")


def normalize_answer(text: str) -> str:
    """Strip surrounding whitespace and leading zeros of an integer answer ('007' == '7')."""
    text = text.strip()
    if _INTEGER.fullmatch(text):
        sign = "-" if text.startswith("-") else ""
        return sign + (text.lstrip("-").lstrip("0") or "0")
    return text


@register("exact_answer", inline=True)
def exact_answer(prompt: str, completion: str, *, answer: str, **_: object) -> float:
    """1.0 when the completion, normalised, equals the ground-truth `answer` field, else 0.0."""
    return 1.0 if normalize_answer(completion) == normalize_answer(str(answer)) else 0.0


# ---------------------------------------------------------------- format


def _check_format_kwargs(kwargs: dict) -> None:
    if not kwargs.get("pattern") and not kwargs.get("required_tags"):
        raise ValueError("format needs `pattern` (a regex) and/or `required_tags` (e.g. [think, answer])")
    if kwargs.get("pattern"):
        try:
            re.compile(kwargs["pattern"])
        except re.error as e:
            raise ValueError(f"format: pattern {kwargs['pattern']!r} is not a valid regex: {e}") from e
    tags = kwargs.get("required_tags") or []
    if isinstance(tags, str) or not all(isinstance(t, str) and re.fullmatch(r"[\w.-]+", t) for t in tags):
        raise ValueError(f"format: required_tags must be a list of tag names like [think, answer], got {tags!r}")


def _tags_in_order(completion: str, tags: list[str]) -> list[bool]:
    """Per tag: `<tag>...</tag>` found after the previous tag's closing tag."""
    found, pos = [], 0
    for tag in tags:
        match = re.compile(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", re.DOTALL).search(completion, pos)
        found.append(match is not None)
        if match is not None:
            pos = match.end()
    return found


@register("format", check_kwargs=_check_format_kwargs)
def format_reward(prompt: str, completion: str, *, pattern: Optional[str] = None,
                  required_tags: Optional[list[str]] = None, fullmatch: bool = False, partial: bool = False,
                  **_: object) -> RewardResult:
    """Checks the completion's shape: a regex (`re.search`, or whole-text with `fullmatch`, DOTALL) and/or
    tags that must appear as `<tag>...</tag>` in the listed order. Score: 1 if every check passes
    (`partial`: the fraction that pass); one sub-score per check."""
    checks: dict[str, float] = {}
    if pattern:
        matcher = re.fullmatch if fullmatch else re.search
        checks["pattern"] = float(matcher(pattern, completion.strip() if fullmatch else completion, re.DOTALL)
                                  is not None)
    for tag, ok in zip(required_tags or [], _tags_in_order(completion, list(required_tags or []))):
        checks[f"tag:{tag}"] = float(ok)
    passed = sum(checks.values())
    score = passed / len(checks) if partial else float(passed == len(checks))
    return RewardResult(score=score, sub_scores=checks)


# ---------------------------------------------------------------- overlong length penalty (DAPO)


def _check_length_kwargs(kwargs: dict) -> None:
    max_len, buffer = kwargs.get("max_len"), kwargs.get("buffer")
    if not isinstance(max_len, int) or not isinstance(buffer, int) or not 0 < buffer <= max_len:
        raise ValueError(f"length_penalty needs integers 0 < buffer <= max_len, got max_len={max_len!r}, "
                         f"buffer={buffer!r}")
    if kwargs.get("unit", "tokens") not in ("tokens", "chars"):
        raise ValueError(f"length_penalty: unit must be 'tokens' or 'chars', got {kwargs['unit']!r}")


@register("length_penalty", inline=True, check_kwargs=_check_length_kwargs)
def length_penalty(prompt: str, completion: str, *, max_len: int, buffer: int, unit: str = "tokens",
                   response_tokens: Optional[int] = None, **_: object) -> float:
    """DAPO's soft overlong punishment: 0 up to max_len - buffer, then linear down to -1 at max_len, -1 past it.

    unit "tokens" reads the per-sample field `response_tokens` (the rollout worker passes it); "chars"
    measures the completion string. Add it to a correctness reward with weight 1 (as in DAPO).
    """
    if unit == "tokens":
        if response_tokens is None:
            raise ValueError("length_penalty(unit='tokens') needs the per-sample field `response_tokens`; "
                             "pass it in score_groups' sample_fields or use unit='chars'")
        length = int(response_tokens)
    else:
        length = len(completion)
    start = max_len - buffer
    if length <= start:
        return 0.0
    if length > max_len:
        return -1.0
    return (start - length) / buffer
