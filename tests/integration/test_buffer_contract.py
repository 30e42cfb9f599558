"""The Buffer contract against both backends, the Redis buffer on a real server and the in-process MemoryBuffer:
admission, staleness eviction, at-least-once pops, bounds, and the bound stored at initialize."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from buffer.api import BoundMismatch, BufferConfig, BufferUnavailable, Group, Sample, connect
from buffer.redis_buffer import RedisBuffer
from buffer.staleness import admission_capacity

pytestmark = pytest.mark.integration



def open_buffer(url, prefix, *, eta=1, B=2, max_in_flight=100, max_buffered=100, claim_idle_s=300.0):
    return connect(url, prefix, BufferConfig(eta=eta, groups_per_step=B, max_in_flight=max_in_flight,
                                             max_buffered=max_buffered, claim_idle_s=claim_idle_s))


def make_buffer(server, prefix, **bound):
    buf = open_buffer(server.url, prefix, **bound)
    buf.initialize(version=0)
    return buf


def group(version: int, prompt_id: str = "p", n: int = 2, reward: float = 1.0) -> Group:
    samples = [Sample(prompt_ids=np.array([1, 2], np.int32), response_ids=np.array([3, 4, 5], np.int32),
                      behaviour_logprobs=np.array([-0.1, -0.2, -0.3], np.float32),
                      token_versions=np.full(3, version, np.int32), reward=reward, finish_reason="stop")
               for _ in range(n)]
    return Group(prompt_id=prompt_id, prompt="1+2=", samples=samples, fields={"answer": "3"})


def test_admit_matches_pure_capacity_rule(buffer_backend, key_prefix):
    buf = make_buffer(buffer_backend, key_prefix, eta=1, B=2, max_in_flight=3)
    # v=0, accepted=0, running=0: min(3 - 0, (1+0+1)*2 - 0) = 3
    assert buf.admit(10) == (3, 0)
    # running=3 now: min(3 - 3, 4 - 3) = 0
    assert buf.admit(10) == (0, 0)
    buf.push([group(0), group(0)], released=0)  # running 1, accepted 2 -> min(2, 4 - 3) = 1
    assert admission_capacity(eta=1, version=0, groups_per_step=2, accepted=2, running=1, max_in_flight=3) == 1
    assert buf.admit(10) == (1, 0)


def test_admission_is_atomic_across_concurrent_workers(buffer_backend, key_prefix):
    buf = make_buffer(buffer_backend, key_prefix, eta=2, B=4, max_in_flight=1000)
    granted = []

    def worker():
        own = open_buffer(buffer_backend.url, key_prefix, eta=2, B=4, max_in_flight=1000)
        for _ in range(50):
            granted.append(own.admit(1)[0])

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # (eta + v + 1) * B = 3 * 4 = 12 slots in total, however the 300 requests interleave
    assert sum(granted) == 12
    assert buf.stats()["running"] == 12


def test_eta_zero_admits_exactly_one_step_per_version(buffer_backend, key_prefix):
    buf = make_buffer(buffer_backend, key_prefix, eta=0, B=2)
    assert buf.admit(5) == (2, 0)
    buf.push([group(0), group(0)])
    assert buf.admit(5) == (0, 0)
    batch = buf.pop(2, timeout_s=2)
    assert batch.staleness == [0, 0]
    buf.bump_version()
    buf.commit(batch)
    assert buf.admit(5) == (2, 1)


def test_pop_evicts_groups_staler_than_eta_and_gives_their_slots_back(buffer_backend, key_prefix):
    buf = make_buffer(buffer_backend, key_prefix, eta=1, B=2)
    buf.admit(4)
    buf.push([group(0, "old-a"), group(0, "old-b"), group(2, "new-a"), group(2, "new-b")])
    buf.bump_version(), buf.bump_version()  # trainer moved on: groups of version 0 are 2 > eta=1 stale
    batch = buf.pop(2, timeout_s=2)
    assert [g.prompt_id for g in batch.groups] == ["new-a", "new-b"]
    assert batch.dropped_stale == 2 and batch.staleness == [0, 0]
    stats = buf.stats()
    assert stats["dropped_stale"] == 2
    assert stats["accepted"] == 2  # 4 pushed - 2 evicted


def test_popped_batch_is_claimed_until_commit_and_reclaimed_after_a_crash(buffer_backend, key_prefix):
    buf = make_buffer(buffer_backend, key_prefix, eta=4, B=2, claim_idle_s=0.2)
    buf.admit(2)
    buf.push([group(0, "a"), group(0, "b")])
    first = buf.pop(2, consumer="trainer-dead", timeout_s=2)
    assert {g.prompt_id for g in first.groups} == {"a", "b"}
    # the dead trainer never commits; a new trainer finds nothing new but reclaims after claim_idle_s
    survivor = open_buffer(buffer_backend.url, key_prefix, eta=4, B=2, claim_idle_s=0.2)
    time.sleep(0.3)
    again = survivor.pop(2, consumer="trainer-new", timeout_s=2)
    assert {g.prompt_id for g in again.groups} == {"a", "b"}
    survivor.commit(again)
    assert buf.stats()["buffered"] == 0
    assert survivor.pop(2, consumer="trainer-new", timeout_s=0.3) is None


def test_a_slow_consumer_never_gets_its_own_groups_twice(buffer_backend, key_prefix):
    """Its held and handed-out groups outlive claim_idle_s without being claimed again (before the fix a 4-group pop
    returned p1, p2, p1, p2, and a later pop returned a batch still in training)."""
    buf = make_buffer(buffer_backend, key_prefix, eta=4, B=4, claim_idle_s=0.1)
    buf.admit(6)
    buf.push([group(0, "p1"), group(0, "p2")])
    assert buf.pop(4, timeout_s=0.5) is None  # waits past claim_idle_s holding p1, p2
    buf.push([group(0, "p3"), group(0, "p4")])
    first = buf.pop(4, timeout_s=2)
    assert sorted(g.prompt_id for g in first.groups) == ["p1", "p2", "p3", "p4"]
    time.sleep(0.2)  # the step takes longer than claim_idle_s
    buf.push([group(0, "p5"), group(0, "p6")])
    assert buf.pop(4, timeout_s=0.5) is None  # only p5, p6 are new: nothing of the batch in training comes back
    buf.commit(first)
    assert buf.stats()["buffered"] == 2


def test_a_released_batch_is_handed_out_again_first(buffer_backend, key_prefix):
    buf = make_buffer(buffer_backend, key_prefix, eta=4, B=2)
    buf.admit(3)
    buf.push([group(0, "a"), group(0, "b"), group(0, "c")])
    failed = buf.pop(2, timeout_s=2)
    buf.release(failed)  # the step that popped it failed before commit
    again = buf.pop(2, timeout_s=2)
    assert again.entry_ids == failed.entry_ids and again.staleness == failed.staleness
    buf.commit(again)
    assert [g.prompt_id for g in buf.pop(1, timeout_s=2).groups] == ["c"]


def test_a_released_batch_is_judged_again_when_the_version_moved(buffer_backend, key_prefix):
    """A trainer restarted from a checkpoint sends its weights as a new version: the batch it gets back may now be
    too stale (before the fix it came back with its old staleness and was trained beyond eta)."""
    buf = make_buffer(buffer_backend, key_prefix, eta=1, B=2)
    buf.admit(2)
    buf.push([group(0, "a"), group(1, "b")])
    buf.bump_version()
    failed = buf.pop(2, timeout_s=2)
    assert failed.staleness == [1, 0]
    buf.release(failed)
    buf.bump_version()  # the restored weights, as version 2
    assert buf.pop(2, timeout_s=0.3) is None  # "a" is now 2 > eta stale: evicted, "b" held
    assert buf.stats()["dropped_stale"] == 1


def test_groups_from_weights_newer_than_the_version_are_evicted_not_trained(buffer_backend, key_prefix):
    """After a resume from an older checkpoint the stream may hold groups of later versions: before the fix they
    were popped at staleness -10 and trained on as if they were older."""
    buf = make_buffer(buffer_backend, key_prefix, eta=2, B=2)
    buf.admit(2)
    buf.push([group(10, "future"), group(0, "now")])
    assert buf.pop(2, timeout_s=0.5) is None
    assert buf.stats()["dropped_stale"] == 1
    buf.admit(1)
    buf.push([group(0, "now2")])
    batch = buf.pop(2, timeout_s=2)
    assert [g.prompt_id for g in batch.groups] == ["now", "now2"] and min(batch.staleness) >= 0


def test_a_dead_workers_reservations_go_back_when_its_lease_expires(buffer_backend, key_prefix):
    """Before leases a worker that died with groups in flight kept their slots forever: capacity shrank with every
    crash until the run stalled."""
    buf = connect(buffer_backend.url, key_prefix, BufferConfig(eta=0, groups_per_step=4, max_in_flight=100,
                                                             max_buffered=100, lease_ttl_s=0.3))
    buf.initialize(version=0)
    assert buf.admit(3, holder="w0-dead") == (3, 0)
    assert buf.admit(4, holder="w1-alive") == (1, 0)  # eta 0: one step of 4 slots
    for _ in range(3):  # the live worker renews, the dead one is silent
        time.sleep(0.15)
        buf.renew("w1-alive")
    assert buf.admit(4, holder="w1-alive") == (3, 0)  # the dead worker's 3 slots came back
    stats = buf.stats()
    assert stats["expired_reservations"] == 3 and stats["running"] == 4
    buf.push([group(0)] * 4, holder="w1-alive")
    # a worker whose lease expired but who pushes late ends only what it still holds: running never goes below 0
    buf.push([], released=3, holder="w0-dead")
    assert buf.stats()["running"] == 0


def test_every_group_pushed_is_committed_dropped_or_still_buffered_even_if_committed_twice(buffer_backend, key_prefix):
    buf = make_buffer(buffer_backend, key_prefix, eta=1, B=2)
    buf.admit(6)
    buf.push([group(0, f"p{i}") for i in range(5)], released=1)  # one filtered: never pushed
    first = buf.pop(2, timeout_s=2)
    buf.commit(first)
    buf.commit(first)  # again, as after a server restart that may have lost it: nothing is counted twice
    buf.bump_version(), buf.bump_version()  # the three left are now 2 > eta stale
    assert buf.pop(2, timeout_s=0.3) is None
    stats = buf.stats()
    assert (stats["pushed"], stats["committed"], stats["dropped_stale"], stats["buffered"]) == (5, 2, 3, 0)


def test_pop_times_out_and_keeps_partial_batch_for_next_call(buffer_backend, key_prefix):
    buf = make_buffer(buffer_backend, key_prefix, eta=4, B=2)
    buf.admit(2)
    buf.push([group(0, "a")], released=1)
    assert buf.pop(2, timeout_s=0.3) is None
    buf.admit(1)
    buf.push([group(0, "b")])
    batch = buf.pop(2, timeout_s=2)
    assert [g.prompt_id for g in batch.groups] == ["a", "b"]


def test_max_buffered_bounds_admission(buffer_backend, key_prefix):
    buf = make_buffer(buffer_backend, key_prefix, eta=100, B=1, max_buffered=3)
    assert buf.admit(10) == (3, 0)
    buf.push([group(0)] * 3)
    assert buf.admit(10) == (0, 0)  # 3 buffered + 0 running = max_buffered


def test_released_slots_return_to_capacity(buffer_backend, key_prefix):
    buf = make_buffer(buffer_backend, key_prefix, eta=0, B=3)
    assert buf.admit(3) == (3, 0)
    buf.push([group(0)], released=2)  # two prompts were filtered out: their slots come back
    assert buf.admit(3) == (2, 0)


def test_initialize_rebases_counters_on_resume(buffer_backend, key_prefix):
    if buffer_backend.url.startswith("memory://"):
        pytest.skip("reaches into Redis keys to fake a crashed worker")
    buf = make_buffer(buffer_backend, key_prefix, eta=1, B=2)
    buf.admit(2)
    buf.push([group(0), group(0)])
    buf.client.set(buf.key("running"), 5)  # a crashed worker left reservations behind
    resumed = RedisBuffer(buffer_backend.url, prefix=key_prefix, eta=1, groups_per_step=2, max_in_flight=100,
                          max_buffered=100)
    resumed.initialize(version=7)
    stats = resumed.stats()
    assert stats["version"] == 7 and stats["running"] == 0
    assert stats["accepted"] == 7 * 2 + 2  # consumed steps + still buffered
    # capacity = (1 + 7 + 1) * 2 - 16 = 2
    assert resumed.admit(10) == (2, 7)


def test_every_process_checks_the_stored_bound(buffer_backend, key_prefix):
    make_buffer(buffer_backend, key_prefix, eta=2, B=4)
    open_buffer(buffer_backend.url, key_prefix, eta=2, B=4)  # the same bound: fine
    with pytest.raises(BoundMismatch, match=r"eta"):
        open_buffer(buffer_backend.url, key_prefix, eta=3, B=4)  # a worker started with another eta
    with pytest.raises(BoundMismatch, match=r"groups_per_step"):
        open_buffer(buffer_backend.url, key_prefix, eta=2, B=8).initialize(version=0)


def test_admission_before_initialize_is_a_clear_error(buffer_backend, key_prefix):
    with pytest.raises(BufferUnavailable, match="not initialized"):
        open_buffer(buffer_backend.url, key_prefix).admit(1)


def test_unreachable_redis_names_the_url_and_the_fix():
    with pytest.raises(BufferUnavailable, match=r"127\.0\.0\.1:1.*buffer\.redis_url"):
        RedisBuffer("redis://127.0.0.1:1/0", prefix="x", eta=0, groups_per_step=1, max_in_flight=1,
                    max_buffered=1)


def test_admission_counts_groups_whatever_their_size(buffer_backend, key_prefix):
    """With GVM, groups differ in size; the staleness bound counts groups (a trainer step takes B groups)."""
    buf = make_buffer(buffer_backend, key_prefix, eta=0, B=2)
    assert buf.admit(5) == (2, 0)
    buf.push([group(0, "small", n=2), group(0, "big", n=14)])
    assert buf.admit(5) == (0, 0)  # two groups = one step's worth, although 16 samples
    batch = buf.pop(2, timeout_s=2)
    assert sorted(len(g.samples) for g in batch.groups) == [2, 14]


def test_each_workers_prompt_cursor_is_kept_for_its_next_incarnation(buffer_backend, key_prefix):
    """A rollout worker records where its prompt source stands; the one Ray restarts in its place (another process,
    another buffer object) reads it back, and a checkpoint does too."""
    buf = make_buffer(buffer_backend, key_prefix)
    assert buf.prompt_cursor(0) is None  # nothing recorded: an endless source, or a worker not started yet
    buf.set_prompt_cursor(0, {"epoch": 1, "position": 37})
    buf.set_prompt_cursor(1, {"epoch": 0, "position": 5})
    buf.set_prompt_cursor(0, {"epoch": 1, "position": 85})  # the newest wins
    again = open_buffer(buffer_backend.url, key_prefix)
    assert [again.prompt_cursor(i) for i in (0, 1, 2)] == [{"epoch": 1, "position": 85}, {"epoch": 0, "position": 5},
                                                           None]
