"""Prompt sources. A prompt source hands out `Prompt`s; dataset fields ride along to the reward function.

`AdditionTask` is the synthetic verifiable task the tiny-model demo and tests use: "123+45=" -> "168".
Held-out problems are a fixed set that the training stream never yields, so held-out success measures
generalisation, not memorisation.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    text: str
    fields: dict = field(default_factory=dict, hash=False, compare=False)  # e.g. {"answer": "168"}


class AdditionTask:
    """Sums of two non-negative integers with up to `num_digits` digits each."""

    def __init__(self, num_digits: int = 2, seed: int = 0, held_out_size: int = 256):
        if num_digits < 1:
            raise ValueError(f"task.num_digits must be >= 1, got {num_digits}")
        pairs = (10 ** num_digits) ** 2
        if held_out_size > pairs // 2:
            raise ValueError(f"task.held_out_size={held_out_size} is more than half of the {pairs} distinct "
                             f"{num_digits}-digit problems; lower it or raise task.num_digits")
        self.num_digits = num_digits
        held_rng = random.Random(f"held-out-{num_digits}")  # same held-out set for every seed and worker
        self._held_out_pairs: list[tuple[int, int]] = []
        seen = set()
        while len(self._held_out_pairs) < held_out_size:
            pair = self._draw(held_rng)
            if pair not in seen:
                seen.add(pair)
                self._held_out_pairs.append(pair)
        self._held_out_set = seen
        self._rng = random.Random(seed)

    def _draw(self, rng: random.Random) -> tuple[int, int]:
        # Draw the digit count first so short and long operands are equally common.
        def operand() -> int:
            d = rng.randint(1, self.num_digits)
            return rng.randrange(10 ** (d - 1) if d > 1 else 0, 10 ** d)
        return operand(), operand()

    @staticmethod
    def make_prompt(a: int, b: int) -> Prompt:
        return Prompt(prompt_id=f"{a}+{b}", text=f"{a}+{b}=", fields={"answer": str(a + b)})

    def next(self, n: int) -> list[Prompt]:
        """The next n training prompts (never a held-out problem)."""
        out = []
        while len(out) < n:
            pair = self._draw(self._rng)
            if pair not in self._held_out_set:
                out.append(self.make_prompt(*pair))
        return out

    def held_out(self) -> list[Prompt]:
        return [self.make_prompt(a, b) for a, b in self._held_out_pairs]
