"""The rewards contract: what a reward function returns and what the scorer hands back.

A reward is a plain function `(prompt: str, completion: str, **fields) -> float | RewardResult`, or, marked
`batched`, `(prompts: list[str], completions: list[str], **fields) -> list[float | RewardResult]`.
Callers outside `rewards/` import only this module and `rewards.scoring`.

Invariants:
- `SampleScore.reward` is always a finite float; a failed sample carries the failure policy's score.
- `SampleScore.details` holds only str/int/float/bool/list/dict (JSON- and msgpack-safe, no None), so
  it can travel in `buffer.schema.Sample.reward_details` without pickle.
- `failure` is one of `FAILURE_KINDS` or None; None means every configured reward returned a finite score
  within its time limit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

# Why a sample's reward could not be computed. Counted by kind in `Scorer.counters()`.
EXCEPTION = "exception"  # the function raised
NON_NUMERIC = "non_numeric"  # it returned something that is not a real number (or a batch of the wrong size)
NON_FINITE = "non_finite"  # it returned NaN or +-inf
TIMEOUT = "timeout"  # it ran past its time limit (and was abandoned, or its process killed)
CRASH = "crash"  # the process running it died (segfault, out-of-memory kill)
FAILURE_KINDS = (EXCEPTION, NON_NUMERIC, NON_FINITE, TIMEOUT, CRASH)

_MAX_STR = 500  # long strings in `info` are cut: details ride along with every sample into Redis


class RewardError(ValueError):
    """Bad reward configuration, raised at start-up (never while scoring)."""


@dataclass
class RewardResult:
    """A score plus named sub-scores (numbers, averaged into metrics) and free-form `info`."""
    score: float
    sub_scores: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """One reward function's verdict on one sample; `failure` None means `score` is finite."""
    score: float = 0.0
    sub_scores: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    failure: Optional[str] = None
    error: str = ""  # why it failed, for the log and the sample's details; empty when it did not


class GroupToScore(NamedTuple):
    """One prompt and its n completions. A plain 3- or 4-tuple works as well."""
    prompt: str
    completions: list[str]
    fields: dict[str, Any]  # dataset fields (answer, tests, ...): keyword arguments of every call
    # Per-completion extra fields (e.g. {"response_tokens": 37, "finish_reason": "length"}); None: none.
    sample_fields: Optional[list[dict[str, Any]]] = None


@dataclass
class SampleScore:
    reward: float  # weighted sum of the rewards, or the failure policy's score
    details: dict[str, Any]  # {"scores": {label: s, "label/sub": s}, "info": {label: {...}}, "failure", "error"}
    failure: Optional[str] = None  # one of FAILURE_KINDS; None: scored normally


@dataclass
class GroupScore:
    samples: list[SampleScore]
    drop: bool = False  # the failure policy is "drop_group" and a sample of this group failed


def outcome_from_value(value: Any) -> Outcome:
    """Check what a reward function returned; never raises."""
    if type(value) is float or type(value) is int:  # the common case; bool, numpy scalars take the general path
        number = float(value)
        if math.isfinite(number):
            return Outcome(score=number)
    if isinstance(value, RewardResult):
        score, subs, info = value.score, value.sub_scores, value.info
    else:
        score, subs, info = value, {}, {}
    number = _as_float(score)
    if number is None:
        return Outcome(failure=NON_NUMERIC, error=f"returned {_describe(score)}, not a number")
    if not math.isfinite(number):
        return Outcome(failure=NON_FINITE, error=f"returned {number}")
    clean_subs = {}
    for name, sub in (subs or {}).items():
        sub_number = _as_float(sub)
        if sub_number is None or not math.isfinite(sub_number):
            # A bad sub-score would poison the averaged metric just as a bad score poisons training.
            kind = NON_NUMERIC if sub_number is None else NON_FINITE
            return Outcome(failure=kind, error=f"sub-score {name!r} is {_describe(sub)}")
        clean_subs[str(name)] = sub_number
    return Outcome(score=number, sub_scores=clean_subs, info=to_plain(info or {}))


def _as_float(value: Any) -> Optional[float]:
    if isinstance(value, (str, bytes)) or value is None:  # "1.0" is a bug in the reward, not a score
        return None
    try:
        return float(value)  # int, bool, float, numpy and 0-d torch scalars
    except (TypeError, ValueError):
        return None


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:80]}"


def to_plain(value: Any, depth: int = 0) -> Any:
    """Make `value` JSON/msgpack-safe: str/int/float/bool/list/dict only. None values in dicts are left out;
    anything else becomes its (cut) repr. Non-finite floats become strings (JSON has no NaN)."""
    if isinstance(value, int):  # bool included
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return value[:_MAX_STR]
    if depth > 8:  # a self-referencing structure: stop rather than recurse forever
        return repr(value)[:_MAX_STR]
    if isinstance(value, dict):
        return {str(k): to_plain(v, depth + 1) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, depth + 1) for v in value if v is not None]
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return to_plain(item(), depth + 1)
        except Exception:  # noqa: BLE001 - an array with several elements, or anything odd
            pass
    return repr(value)[:_MAX_STR]
