"""Calling reward functions safely, and the watched thread that enforces time limits."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from rewards.calls import Chunk, Running, ThreadRunner, invoke
from rewards.schema import EXCEPTION, NON_NUMERIC, TIMEOUT, Outcome, RewardResult


def one(prompt, completion, **fields):
    return 1.0


def test_invoke_passes_fields_as_keywords():
    seen = {}

    def reward(prompt, completion, **fields):
        seen.update(fields, prompt=prompt, completion=completion)
        return 0.5

    [outcome] = invoke(reward, False, ("p", "c", {"answer": "3", "tests": ["assert 1"]}), 1)
    assert outcome.score == 0.5
    assert seen == {"prompt": "p", "completion": "c", "answer": "3", "tests": ["assert 1"]}


def test_invoke_turns_exceptions_and_exit_into_failures():
    def raises(prompt, completion, **f):
        raise KeyError("answer")

    def exits(prompt, completion, **f):
        raise SystemExit(3)

    [outcome] = invoke(raises, False, ("p", "c", {}), 1)
    assert (outcome.failure, outcome.error) == (EXCEPTION, "KeyError: 'answer'")
    assert invoke(exits, False, ("p", "c", {}), 1)[0].failure == EXCEPTION


def test_invoke_batched_expands_one_outcome_per_sample():
    def batch(prompts, completions, **f):
        return [float(len(c)) for c in completions]

    outcomes = invoke(batch, True, (["p", "p"], ["a", "abc"], {}), 2)
    assert [o.score for o in outcomes] == [1.0, 3.0]


@pytest.mark.parametrize("value, error", [
    ([1.0], "returned 1 values for 2 samples"),
    (0.5, "returned float, not a list"),
])
def test_invoke_batched_of_the_wrong_shape_fails_every_sample(value, error):
    outcomes = invoke(lambda prompts, completions, **f: value, True, (["p", "p"], ["a", "b"], {}), 2)
    assert [o.failure for o in outcomes] == [NON_NUMERIC, NON_NUMERIC]
    assert error in outcomes[0].error


def test_invoke_runs_a_returned_coroutine():
    async def later():
        return RewardResult(0.25, {"x": 1.0})

    [outcome] = invoke(lambda p, c, **f: later(), False, ("p", "c", {}), 1)
    assert (outcome.score, outcome.sub_scores) == (0.25, {"x": 1.0})


def _chunk(fn, n, timeout_s=1.0, is_async=False, first_id=0):
    return Chunk(fn, False, is_async, timeout_s, [("p", str(i), {}) for i in range(n)],
                 list(range(first_id, first_id + n)), [1] * n)


def _run(chunks):
    results = {}
    runner = ThreadRunner()
    runner.start(chunks).finish(lambda call_id, outcomes: results.__setitem__(call_id, outcomes[0]))
    return results, runner


def test_thread_runner_runs_every_call_of_every_chunk():
    results, runner = _run([_chunk(one, 3), _chunk(one, 2, first_id=3)])
    assert sorted(results) == [0, 1, 2, 3, 4]
    assert all(o.score == 1.0 for o in results.values()) and runner.abandoned_threads == 0


def test_a_hung_call_times_out_and_the_rest_run_in_a_fresh_thread():
    release = threading.Event()

    def hangs_on_1(prompt, completion, **f):
        if completion == "1":
            release.wait(10)  # hung until the test ends
        return 1.0

    t0 = time.monotonic()
    try:
        results, runner = _run([_chunk(hangs_on_1, 4, timeout_s=0.3), _chunk(one, 1, first_id=4)])
    finally:
        release.set()
    assert time.monotonic() - t0 < 3.0  # 0.3 s limit, not 10 s
    assert results[1].failure == TIMEOUT and "0.3 s limit" in results[1].error
    assert [results[i].score for i in (0, 2, 3, 4)] == [1.0, 1.0, 1.0, 1.0]
    assert runner.abandoned_threads == 1


def test_a_call_reported_after_its_limit_is_still_a_timeout():
    # The watcher may read an event late (it was busy with the pool); the call's own duration decides.
    got = {}
    running = Running(_chunk(one, 2, timeout_s=0.2), started=100.0)
    sink = got.__setitem__
    running.done(0, [Outcome(score=1.0)], 100.0, 100.1, lambda i, o: sink(i, o[0]), received=0.0)  # 0.1 s
    running.done(1, [Outcome(score=1.0)], 100.1, 100.5, lambda i, o: sink(i, o[0]), received=0.0)  # 0.4 s
    assert got[0].score == 1.0 and got[0].failure is None
    assert got[1].failure == TIMEOUT and "ran 0.40 s, past its 0.2 s limit" in got[1].error
    assert running.finished()


def test_giving_up_on_a_sync_chunk_fails_the_running_call_and_returns_the_rest():
    got = {}
    running = Running(_chunk(one, 4, timeout_s=1.0), started=0.0)
    running.done(0, [Outcome(score=1.0)], 0.0, 0.1, lambda i, o: got.__setitem__(i, o[0]), received=0.0)
    rest = running.give_up(TIMEOUT, "stuck", lambda i, o: got.__setitem__(i, o[0]))
    assert got[1].failure == TIMEOUT and 2 not in got
    assert rest.ids == [2, 3] and [c[1] for c in rest.calls] == ["2", "3"]


def test_async_calls_run_concurrently_each_under_its_limit():
    async def sleepy(prompt, completion, **f):
        await asyncio.sleep(0.3 if completion != "2" else 5.0)
        return 1.0

    t0 = time.monotonic()
    results, runner = _run([_chunk(sleepy, 6, timeout_s=1.0, is_async=True)])
    elapsed = time.monotonic() - t0
    assert elapsed < 2.5  # 6 x 0.3 s together, and the 5 s one cut at 1 s; sequential would be > 6 s
    assert results[2].failure == TIMEOUT
    assert [results[i].score for i in (0, 1, 3, 4, 5)] == [1.0] * 5
    assert runner.abandoned_threads == 0  # cancelled by asyncio, no thread lost


def test_async_reward_that_blocks_its_loop_is_cut_by_the_watcher():
    async def blocks(prompt, completion, **f):
        time.sleep(3.0)  # blocks the event loop: asyncio cannot cancel it
        return 1.0

    t0 = time.monotonic()
    results, runner = _run([_chunk(blocks, 2, timeout_s=0.3, is_async=True)])
    assert time.monotonic() - t0 < 2.5  # 0.3 s limit + 1 s grace
    assert results[0].failure == TIMEOUT and results[1].failure == TIMEOUT
    assert runner.abandoned_threads == 1
