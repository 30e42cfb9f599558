"""The synthetic verifiable task the tiny-model demo and tests use: "12+45=" -> "57".

With `max_operands > 2` it becomes a chain whose answer lists the running sums, "12+45+30=" -> "57,87":
the number of operands k is drawn with P(k) proportional to operands_decay^(k-2), so response lengths have
a long tail, as reasoning traces do. Held-out problems are a fixed set that the training stream never
yields, so held-out success measures generalisation, not memorisation. `addition_model.py` beside it builds
the tiny model that has learnt a little of it.
"""
from __future__ import annotations

import random
from itertools import accumulate

from rollout.config import DataConfig, TaskConfig
from rollout.prompts import PROMPT_SOURCES, Prompt, SourceContext

# How operands are drawn. "uniform": every operand value equally likely, so every problem is rare and the
# held-out set is a uniform sample of the same distribution. "digits": the digit count first, so the 100
# one-digit pairs make a quarter of the stream; a model memorises them, and the ones held out are never seen
# (docs/algorithms.md, "Why training reward rose while held-out success did not").
OPERAND_DISTRIBUTIONS = ("uniform", "digits")


class AdditionTask:
    """Sums of non-negative integers with up to `num_digits` digits each."""

    def __init__(self, num_digits: int = 2, seed: int = 0, held_out_size: int = 256, max_operands: int = 2,
                 operands_decay: float = 0.5, pool_size: int = 0, pool_seed: int = 0, operands: str = "digits"):
        if num_digits < 1:
            raise ValueError(f"task.num_digits must be >= 1, got {num_digits}")
        if max_operands < 2 or not 0 < operands_decay <= 1:
            raise ValueError(f"task.max_operands must be >= 2 (got {max_operands}) and task.operands_decay in "
                             f"(0, 1] (got {operands_decay})")
        pairs = (10 ** num_digits) ** 2
        if held_out_size > pairs // 2:
            raise ValueError(f"task.held_out_size={held_out_size} is more than half of the {pairs} distinct "
                             f"{num_digits}-digit problems; lower it or raise task.num_digits")
        if operands not in OPERAND_DISTRIBUTIONS:
            raise ValueError(f"task.operands={operands!r}: one of {', '.join(OPERAND_DISTRIBUTIONS)}")
        self.num_digits, self.max_operands, self.operands = num_digits, max_operands, operands
        self._k_weights = [operands_decay ** (k - 2) for k in range(2, max_operands + 1)]
        held_rng = random.Random(f"held-out-{num_digits}-{max_operands}-{operands_decay}-{operands}")  # same set
        # for every seed and worker
        self._held_out: list[tuple[int, ...]] = []
        seen: set[tuple[int, ...]] = set()
        while len(self._held_out) < held_out_size:
            problem = self._draw(held_rng)
            if problem not in seen:
                seen.add(problem)
                self._held_out.append(problem)
        self._held_out_set = seen
        self._rng = random.Random(seed)
        # pool_size > 0: a fixed training set (the same for every worker: pool_seed), visited in a fresh random
        # order each epoch, so prompts recur and per-prompt statistics mean something.
        self._pool: list[tuple[int, ...]] = []
        if pool_size > 0:
            pool_rng, members = random.Random(f"pool-{pool_seed}"), set()
            while len(self._pool) < pool_size:
                problem = self._draw(pool_rng)
                if problem not in self._held_out_set and problem not in members:
                    members.add(problem)
                    self._pool.append(problem)
        self._order: list[int] = []

    def _draw(self, rng: random.Random) -> tuple[int, ...]:
        def operand() -> int:
            if self.operands == "uniform":
                return rng.randrange(10 ** self.num_digits)
            d = rng.randint(1, self.num_digits)  # "digits": short and long operands equally common
            return rng.randrange(10 ** (d - 1) if d > 1 else 0, 10 ** d)
        k = 2 if self.max_operands == 2 else rng.choices(range(2, self.max_operands + 1), self._k_weights)[0]
        return tuple(operand() for _ in range(k))

    @staticmethod
    def make_prompt(*operands: int) -> Prompt:
        expr = "+".join(map(str, operands))
        running = list(accumulate(operands))[1:]  # the sums after each '+'
        return Prompt(prompt_id=expr, text=f"{expr}=", fields={"answer": ",".join(map(str, running))})

    def max_answer_chars(self) -> int:
        """Longest possible answer in characters: k-1 running sums of up to num_digits+1 digits, commas."""
        sum_digits = len(str((10 ** self.num_digits - 1) * self.max_operands))
        return (self.max_operands - 1) * (sum_digits + 1) - 1

    def next(self, n: int) -> list[Prompt]:
        """The next n training prompts (never a held-out problem)."""
        out = []
        while len(out) < n:
            if self._pool:
                if not self._order:
                    self._order = self._rng.sample(range(len(self._pool)), len(self._pool))
                out.append(self.make_prompt(*self._pool[self._order.pop()]))
                continue
            problem = self._draw(self._rng)
            if problem not in self._held_out_set:
                out.append(self.make_prompt(*problem))
        return out

    def held_out(self) -> list[Prompt]:
        return [self.make_prompt(*p) for p in self._held_out]

    def state(self) -> dict:
        """Where the training stream stands (JSON): its random generator and the pool epoch's remaining order. A
        checkpoint or a restarted worker restores it, so the stream goes on instead of repeating its start."""
        version, internal, gauss = self._rng.getstate()
        return {"rng": [version, list(internal), gauss], "order": list(self._order)}

    def restore(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
        self._order = list(state["order"])


@PROMPT_SOURCES.register("addition")
def addition_source(data: DataConfig, task: TaskConfig, ctx: SourceContext) -> AdditionTask:
    """Each worker its own stream (seed, worker id); the same held-out set and training pool for all."""
    return AdditionTask(num_digits=task.num_digits, seed=ctx.seed * 1_000 + ctx.worker_id,
                        held_out_size=task.held_out_size, max_operands=task.max_operands,
                        operands_decay=task.operands_decay, pool_size=task.pool_size, pool_seed=ctx.seed,
                        operands=task.operands)
