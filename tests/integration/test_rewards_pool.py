"""The process pool for cpu_heavy rewards, with real worker processes: time limits kill and replace a
worker, a crashing worker costs one call, and the caller's process stays free while the pool works."""
from __future__ import annotations

import os
import textwrap
import time
import uuid

import psutil
import pytest

from rewards import RewardConfig, RewardSpec, build_scorer

pytestmark = pytest.mark.integration

PLUGIN = '''
import asyncio, ctypes, os, time

async def async_pid(prompt, completion, **fields):
    await asyncio.sleep(5.0 if completion == "slow" else 0.1)
    return float(os.getpid())

def batch_pid(prompts, completions, **fields):
    return [float(os.getpid())] * len(completions)
batch_pid.batched = True
batch_pid.cpu_heavy = True

def spin(prompt, completion, **fields):
    """CPU-bound: ~0.15 s of pure Python per call, or forever for "hang"."""
    end = time.monotonic() + 0.15
    while completion == "hang" or time.monotonic() < end:
        pass
    return 1.0
spin.cpu_heavy = True

def pid(prompt, completion, **fields):
    return float(os.getpid())

def dies(prompt, completion, **fields):
    if completion == "segfault":
        ctypes.string_at(0)  # reads address 0: SIGSEGV kills the worker process
    if completion == "exit":
        os._exit(3)
    if completion == "raise":
        raise ValueError("bad sample")
    return 1.0
dies.cpu_heavy = True
'''


@pytest.fixture
def mod(tmp_path, monkeypatch):
    """A plugin module on sys.path, hence importable in the pool's processes (they get PYTHONPATH)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"pool_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(PLUGIN))
    return name


def test_math_runs_in_the_pool_on_real_answers():
    cfg = RewardConfig(rewards=[RewardSpec("math")])
    with build_scorer(cfg) as scorer:
        groups = scorer.score_groups([
            ("1/2 = ?", ["so \\boxed{\\frac{1}{2}}", "$0.5$", "\\boxed{2}", "I give up"], {"answer": "1/2"}),
            ("expand", ["\\boxed{(x-1)(x+1)}", "\\boxed{x^2+1}"], {"answer": "x^2-1"}),
        ])
        assert [[s.reward for s in g.samples] for g in groups] == [[1.0, 1.0, 0.0, 0.0], [1.0, 0.0]]
        assert groups[0].samples[3].details["scores"]["math/answer_found"] == 0.0
        assert len(scorer._pool.workers) >= 1  # it did run in the pool


def test_process_mode_runs_in_other_processes_bounded_by_pool_workers(mod):
    cfg = RewardConfig(rewards=[RewardSpec(f"{mod}:pid", run_in="process")], pool_workers=2)
    with build_scorer(cfg) as scorer:
        [group] = scorer.score_groups([("q", [str(i) for i in range(12)], {})])
    pids = {int(s.reward) for s in group.samples}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_a_hung_reward_is_killed_at_its_limit_and_its_worker_replaced(mod):
    cfg = RewardConfig(rewards=[RewardSpec(f"{mod}:spin", timeout_s=1.0)], pool_workers=2)
    with build_scorer(cfg) as scorer:
        scorer.warm_up()  # worker start-up is not what is timed here
        t0 = time.monotonic()
        [group] = scorer.score_groups([("q", ["a", "hang", "b", "c", "d", "e"], {})])
        elapsed = time.monotonic() - t0
        assert [s.failure for s in group.samples] == [None, "timeout", None, None, None, None]
        assert "ran past its 1 s limit (process killed)" in group.samples[1].details["error"]
        assert elapsed < 6.0  # 1 s limit + a new worker, not forever
        assert scorer.counters()["pool_restarts"] == 1 and scorer.counters()["failures/timeout"] == 1
        # the pool still works afterwards
        [again] = scorer.score_groups([("q", ["a", "b"], {})])
        assert [s.reward for s in again.samples] == [1.0, 1.0]


@pytest.mark.parametrize("completion, kind, error", [
    ("segfault", "crash", f"exit status {-11}"),  # -SIGSEGV
    ("exit", "crash", "exit status 3"),
    ("raise", "exception", "ValueError: bad sample"),
])
def test_a_reward_that_kills_its_process_costs_one_sample(mod, completion, kind, error):
    cfg = RewardConfig(rewards=[RewardSpec(f"{mod}:dies")], pool_workers=1, on_failure="drop_group")
    with build_scorer(cfg) as scorer:
        groups = scorer.score_groups([("q", ["ok", completion, "ok", "ok"], {}), ("q2", ["ok", "ok"], {})])
        assert [s.failure for s in groups[0].samples] == [None, kind, None, None]
        assert error in groups[0].samples[1].details["error"]
        assert [g.drop for g in groups] == [True, False]
        assert scorer.counters()["pool_restarts"] == (1 if kind == "crash" else 0)


def test_the_callers_process_stays_idle_while_the_pool_computes(mod):
    # 16 calls x 0.15 s of CPU in the pool: the caller only waits (a rollout worker keeps generating).
    cfg = RewardConfig(rewards=[RewardSpec(f"{mod}:spin")], pool_workers=2)
    with build_scorer(cfg) as scorer:
        scorer.warm_up()
        wall0, cpu0 = time.monotonic(), time.process_time()
        [group] = scorer.score_groups([("q", [str(i) for i in range(16)], {})])
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    assert all(s.reward == 1.0 for s in group.samples)
    assert wall > 1.0  # >= 16 x 0.15 s / 2 workers
    assert cpu < 0.25 * wall  # this process barely used the CPU meanwhile


def test_close_kills_the_workers(mod):
    scorer = build_scorer(RewardConfig(rewards=[RewardSpec(f"{mod}:spin")], pool_workers=2))
    scorer.warm_up()
    pids = [w.proc.pid for w in scorer._pool.workers]
    assert pids and all(psutil.pid_exists(p) for p in pids)
    scorer.close()
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


def test_thread_and_pool_rewards_combine(mod):
    cfg = RewardConfig(rewards=[RewardSpec("math", weight=1.0), RewardSpec("exact_answer", weight=0.5),
                                RewardSpec("length_penalty", kwargs={"max_len": 10, "buffer": 5})])
    with build_scorer(cfg) as scorer:
        [group] = scorer.score_groups([("q", ["7", "\\boxed{7}"], {"answer": "7"},
                                        [{"response_tokens": 3}, {"response_tokens": 8}])])
    # "7": math 1 + exact 0.5*1 + length 0; "\boxed{7}": math 1 + exact 0 + length (5-8)/5 = -0.6
    assert [s.reward for s in group.samples] == pytest.approx([1.5, 0.4])


def test_workers_get_the_parents_sys_path(mod):
    # the plugin's directory is only on this process's sys.path (see `mod`), not in its environment
    cfg = RewardConfig(rewards=[RewardSpec(f"{mod}:pid", run_in="process")], pool_workers=1)
    with build_scorer(cfg) as scorer:
        assert scorer.score("q", "c").failure is None  # the worker imported the plugin module


def test_async_and_batched_rewards_run_in_the_pool_too(mod):
    cfg = RewardConfig(rewards=[RewardSpec(f"{mod}:async_pid", run_in="process", timeout_s=1.0),
                                RewardSpec(f"{mod}:batch_pid")], pool_workers=2)
    with build_scorer(cfg) as scorer:
        scorer.warm_up()
        t0 = time.monotonic()
        groups = scorer.score_groups([("q", ["a", "b", "slow", "c"], {}), ("q2", ["d"], {})])
        elapsed = time.monotonic() - t0
    samples = [s for g in groups for s in g.samples]
    assert [s.failure for s in samples] == [None, None, "timeout", None, None]
    assert elapsed < 4.0  # concurrent 0.1 s sleeps; the 5 s one cut at 1 s
    pids = {s.details["scores"]["async_pid"] for s in samples if s.failure is None}
    batch_pids = {s.details["scores"]["batch_pid"] for s in samples}
    assert len(pids) == 1 and len(batch_pids) == 1 and os.getpid() not in pids | batch_pids
