"""Per-prompt pass statistics in Redis, shared by every rollout worker (and later the allocator).

One hash `<prefix>:prompt_stats` with fields `<prompt id>|a` (attempts) and `<prompt id>|p` (passes); updates
are HINCRBY in one pipeline, so concurrent workers on any node add up exactly.
"""
from __future__ import annotations


class PromptStats:
    def __init__(self, client, prefix: str):
        self.client, self.key = client, f"{prefix}:prompt_stats"

    def record(self, results: list[tuple[str, int, int]]) -> None:
        """results: (prompt id, attempts, passes) per scored group."""
        if not results:
            return
        with self.client.pipeline(transaction=False) as p:
            for prompt_id, attempts, passes in results:
                p.hincrby(self.key, f"{prompt_id}|a", attempts)
                p.hincrby(self.key, f"{prompt_id}|p", passes)
            p.execute()

    def get(self, prompt_ids: list[str]) -> list[tuple[int, int]]:
        """(attempts, passes) per prompt id; (0, 0) for a prompt never seen."""
        if not prompt_ids:
            return []
        fields = [f"{pid}|{k}" for pid in prompt_ids for k in ("a", "p")]
        values = [int(v or 0) for v in self.client.hmget(self.key, fields)]
        return list(zip(values[0::2], values[1::2]))
