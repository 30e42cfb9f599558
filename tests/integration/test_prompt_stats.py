"""Per-prompt pass statistics shared by concurrent workers, against a real Redis server."""
from __future__ import annotations

import threading

import pytest
import redis

from buffer.prompt_stats import PromptStats

pytestmark = pytest.mark.integration


def test_unseen_prompts_read_as_zero(redis_server, key_prefix):
    stats = PromptStats(redis.Redis.from_url(redis_server.url), key_prefix)
    assert [(s.seen, s.passes) for s in stats.get_stats(["never-seen", "other"])] == [(0, 0), (0, 0)]
    assert stats.get_stats([]) == []


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
    assert [(s.seen, s.passes) for s in stats.get_stats(["1+2", "only-0", "only-3"])] == [(800, 300), (100, 100),
                                                                                           (100, 100)]


def test_recency_weighting_follows_the_newest_results(redis_server, key_prefix):
    stats = PromptStats(redis.Redis.from_url(redis_server.url), key_prefix, decay=0.5)
    stats.record([("q", 4, 0)])  # a = 0 * 0.5 + 4 = 4, p = 0
    stats.record([("q", 4, 4)])  # a = 4 * 0.5 + 4 = 6, p = 0 * 0.5 + 4 = 4
    s = stats.get_stats(["q"])[0]
    assert (s.attempts, s.passes, s.seen) == (6.0, 4.0, 8)  # recent pass rate 4/6, plain 4/8


def test_gradient_norm_is_an_ema_tagged_with_its_version(redis_server, key_prefix):
    stats = PromptStats(redis.Redis.from_url(redis_server.url), key_prefix, grad_mix=0.25)
    assert stats.get_stats(["q"])[0].grad_norm is None
    stats.record_grad_norms({"q": 8.0}, version=3)  # first value taken as is
    stats.record_grad_norms({"q": 4.0}, version=5)  # 0.75 * 8 + 0.25 * 4 = 7
    s = stats.get_stats(["q"])[0]
    assert (s.grad_norm, s.grad_version) == (7.0, 5)
