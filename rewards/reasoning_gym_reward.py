"""The `reasoning_gym` reward: a reasoning-gym task scores its own answers (`score_answer`), so the verifier is the
task author's, not a string match. The answer is what the completion puts between <answer> tags, or the whole
completion stripped when it has none (the tiny-model and base-model case)."""
from __future__ import annotations

from typing import Any

from rewards.registry import register


@register("reasoning_gym")
def reasoning_gym_reward(prompt: str, completion: str, *, answer: str, metadata: dict, **_: Any) -> float:
    import reasoning_gym
    from reasoning_gym.utils import extract_answer

    given = extract_answer(completion) if "<answer>" in completion else completion.strip()
    score = reasoning_gym.get_score_answer_fn(metadata["source_dataset"])
    return float(score(answer=given or "", entry={"question": prompt, "answer": answer, "metadata": metadata}))
