"""Per-prompt statistics in Redis, shared by every rollout worker, the trainer and the allocator.

One hash per prompt, `<prefix>:ps:<prompt id>`, with fields
  a, p   attempts and passes, recency-weighted: each update first multiplies both by `decay`, so they follow
         the improving policy (decay = 1 keeps plain counts);
  n      plain attempts (never decayed: "has this prompt been seen");
  g, gv  an exponential moving average of the prompt's gradient-norm estimate, and the policy version that
         wrote it last (its age in versions is a metric).
Each update is one Lua script per batch, so concurrent writers on any node never lose an increment.
"""
from __future__ import annotations

from dataclasses import dataclass

from buffer.redis_client import redis_errors

_RECORD_LUA = """
local decay = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local a = tonumber(redis.call('HGET', key, 'a') or '0')
  local p = tonumber(redis.call('HGET', key, 'p') or '0')
  local base = 1 + (i - 1) * 2
  redis.call('HSET', key, 'a', tostring(a * decay + tonumber(ARGV[base + 1])),
                          'p', tostring(p * decay + tonumber(ARGV[base + 2])))
  redis.call('HINCRBY', key, 'n', tonumber(ARGV[base + 1]))
end
return #KEYS
"""

_GRAD_LUA = """
local mix, version = tonumber(ARGV[1]), ARGV[2]
for i, key in ipairs(KEYS) do
  local g = redis.call('HGET', key, 'g')
  local new = tonumber(ARGV[2 + i])
  if g then new = (1 - mix) * tonumber(g) + mix * new end
  redis.call('HSET', key, 'g', tostring(new), 'gv', version)
end
return #KEYS
"""


@dataclass(frozen=True)
class PromptStat:
    attempts: float = 0.0  # recency-weighted
    passes: float = 0.0  # recency-weighted
    seen: int = 0  # plain attempts
    grad_norm: float | None = None  # None: no estimate yet
    grad_version: int = -1  # policy version of the last gradient-norm update; -1: none

    @property
    def pass_rate(self) -> float:
        """Recent pass rate: recency-weighted passes over recency-weighted attempts (0 for a prompt never seen).
        Both sides decay alike, so the ratio follows the policy; `seen` says whether there is enough evidence."""
        return self.passes / self.attempts if self.attempts > 0 else 0.0


class PromptStats:
    """The Redis implementation of buffer.api.PromptStatsStore."""

    def __init__(self, client, prefix: str, decay: float = 1.0, grad_mix: float = 0.5):
        if not 0 < decay <= 1 or not 0 < grad_mix <= 1:
            raise ValueError(f"decay and grad_mix must be in (0, 1], got {decay}, {grad_mix}")
        self.client, self.prefix, self.decay, self.grad_mix = client, prefix, decay, grad_mix
        self.url = "{host}:{port}".format(**client.connection_pool.connection_kwargs)  # for error messages
        self._record = client.register_script(_RECORD_LUA)
        self._grad = client.register_script(_GRAD_LUA)

    def _key(self, prompt_id: str) -> str:
        return f"{self.prefix}:ps:{prompt_id}"

    @redis_errors
    def record(self, results: list[tuple[str, int, int]]) -> None:
        """results: (prompt id, attempts, passes) per scored group."""
        if results:
            args = [self.decay] + [x for _, a, p in results for x in (a, p)]
            self._record(keys=[self._key(pid) for pid, _, _ in results], args=args)

    @redis_errors
    def record_grad_norms(self, norms: dict[str, float], version: int) -> None:
        """Written by the trainer for the prompts it trained on: EMA with weight grad_mix on the new value."""
        if norms:
            self._grad(keys=[self._key(pid) for pid in norms], args=[self.grad_mix, version, *norms.values()])

    @redis_errors
    def get_stats(self, prompt_ids: list[str]) -> list[PromptStat]:
        with self.client.pipeline(transaction=False) as pipe:
            for pid in prompt_ids:
                pipe.hmget(self._key(pid), "a", "p", "n", "g", "gv")
            rows = pipe.execute()
        return [PromptStat(float(a or 0), float(p or 0), int(n or 0), float(g) if g is not None else None,
                           int(gv) if gv is not None else -1) for a, p, n, g, gv in rows]
