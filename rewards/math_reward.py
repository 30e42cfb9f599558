"""Built-in `math`: is the completion's final answer mathematically equal to the `answer` field?

Parsing and comparison are Hugging Face's math-verify (LaTeX and plain expressions through SymPy):
`\\boxed{\\frac{1}{2}}` matches `0.5` and `1/2`, `\\boxed{(x-1)(x+1)}` matches `x^2-1`. The gold answer
is wrapped in `$...$` when it has neither `$` nor `\\boxed`, because math-verify's LaTeX extractor only
looks inside math delimiters (`\\frac{\\sqrt{3}}{2}` alone would not parse).

Marked cpu_heavy (SymPy can take tens of milliseconds): it runs in the process pool, in the worker's
main thread, where math-verify's own signal-based timeouts work. In a thread (run_in: thread) those
timeouts cannot work, so they are off and only the scorer's time limit applies.
"""
from __future__ import annotations

import functools
import threading
from typing import Any

from rewards.registry import register
from rewards.schema import RewardResult

MATH_VERIFY_TIMEOUT_S = 5  # math-verify's own per-parse / per-compare limit (main thread only)


def _timeout() -> Any:
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)  # the same gold answer is parsed once per group, not once per sample
def _parse_gold(answer: str) -> tuple:
    from math_verify import parse

    text = answer if ("$" in answer or "\\boxed" in answer) else f"${answer}$"
    return tuple(parse(text, parsing_timeout=_timeout()))


@register("math", cpu_heavy=True)
def math_answer(prompt: str, completion: str, *, answer: Any, **_: object) -> RewardResult:
    """1.0 when math-verify finds the completion's answer equal to `answer`, else 0.0."""
    from math_verify import parse, verify

    gold = list(_parse_gold(str(answer)))
    if not gold:  # a gold answer that does not parse is a dataset problem: fail loudly, do not score 0
        raise ValueError(f"math: cannot parse the gold answer {answer!r}")
    predicted = parse(completion, parsing_timeout=_timeout())
    correct = bool(predicted) and verify(gold, predicted, timeout_seconds=_timeout())
    return RewardResult(score=float(correct), sub_scores={"answer_found": float(bool(predicted))},
                        info={"extracted": str(predicted[-1]) if predicted else ""})
