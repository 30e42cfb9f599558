"""Per-prompt pass statistics shared by concurrent workers, against a real Redis server."""
from __future__ import annotations

import threading

import pytest
import redis

from buffer.prompt_stats import PromptStats

pytestmark = pytest.mark.integration


def test_unseen_prompts_read_as_zero(redis_server, key_prefix):
    stats = PromptStats(redis.Redis.from_url(redis_server.url), key_prefix)
    assert stats.get(["never-seen", "other"]) == [(0, 0), (0, 0)]
    assert stats.get([]) == []


def test_concurrent_workers_add_up_exactly(redis_server, key_prefix):
    def worker(i: int) -> None:
        own = PromptStats(redis.Redis.from_url(redis_server.url), key_prefix)
        for _ in range(25):
            own.record([("1+2", 8, 3), (f"only-{i}", 4, 4)])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = PromptStats(redis.Redis.from_url(redis_server.url), key_prefix)
    # 4 workers x 25 records x (8 attempts, 3 passes) on the shared prompt; 25 x (4, 4) on each own prompt
    assert stats.get(["1+2", "only-0", "only-3"]) == [(800, 300), (100, 100), (100, 100)]
