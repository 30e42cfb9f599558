"""The Scorer with rewards that run in threads: weights, fields, async and batched forms, failure policy.

The process pool and the sandbox are covered in tests/integration/test_rewards_*.py.
"""
from __future__ import annotations

import json
import time

import msgpack
import pytest

from rewards import (FAILURE_KINDS, RewardConfig, RewardError, RewardSpec, build_scorer, reward_metrics)

PLUGIN = '''
import asyncio, math, time
from rewards import RewardResult

calls = []

def length(prompt, completion, **fields):
    return float(len(completion))

def echo_fields(prompt, completion, **fields):
    return RewardResult(1.0, info={"fields": fields})

def exact(prompt, completion, *, answer, **fields):
    return RewardResult(float(completion == answer), {"close": float(completion.strip() == answer)},
                        {"answer": answer})

async def async_exact(prompt, completion, *, answer, **fields):
    await asyncio.sleep(0.2)
    return float(completion == answer)

def batch_len(prompts, completions, **fields):
    calls.append({"prompts": list(prompts), "completions": list(completions), **fields})
    return [float(len(c)) for c in completions]
batch_len.batched = True

def raises(prompt, completion, **fields):
    if completion == "bad":
        raise RuntimeError("cannot score " + completion)
    return 1.0

def text(prompt, completion, **fields):
    return "1.0" if completion == "bad" else 1.0

def nan(prompt, completion, **fields):
    return math.nan if completion == "bad" else 1.0

def sleeps(prompt, completion, **fields):
    if completion == "bad":
        time.sleep(3.0)
    return 1.0

def huge(prompt, completion, **fields):
    return 1e308

def where(prompt, completion, **fields):  # the thread it runs in
    import threading
    return float(threading.get_ident())

def slow(prompt, completion, **fields):
    time.sleep(0.3)
    return 1.0
'''


@pytest.fixture
def mod(plugin):
    return plugin(PLUGIN)


def scorer_for(*specs, **cfg):
    return build_scorer(RewardConfig(rewards=list(specs), **cfg))


def test_default_config_scores_exact_answers():
    with build_scorer() as scorer:
        [group] = scorer.score_groups([("9+10=", ["19", " 019", "21"], {"answer": "19"})])
    assert [s.reward for s in group.samples] == [1.0, 1.0, 0.0]
    assert group.samples[0].details == {"scores": {"exact_answer": 1.0}}
    assert not group.drop and all(s.failure is None for s in group.samples)


def test_weighted_sum_with_sub_scores_and_info(mod):
    scorer = scorer_for(RewardSpec(f"{mod}:exact", weight=2.0), RewardSpec(f"{mod}:length", weight=-0.1))
    [group] = scorer.score_groups([("q", ["42", "42 "], {"answer": "42"})])
    first, second = group.samples
    assert first.reward == pytest.approx(2.0 * 1.0 - 0.1 * 2)  # exact 1, length 2
    assert second.reward == pytest.approx(2.0 * 0.0 - 0.1 * 3)  # exact 0 ("42 " != "42"), length 3
    assert first.details == {"scores": {"exact": 1.0, "exact/close": 1.0, "length": 2.0},
                             "info": {"exact": {"answer": "42"}}}
    assert second.details["scores"]["exact/close"] == 1.0


def test_dataset_fields_sample_fields_and_config_kwargs_reach_the_function(mod):
    scorer = scorer_for(RewardSpec(f"{mod}:echo_fields", kwargs={"level": "hard", "answer": "from-config"}))
    [group] = scorer.score_groups([("q", ["a", "b"], {"answer": "7", "tests": ["assert True"]},
                                    [{"response_tokens": 1, "finish_reason": "stop"},
                                     {"response_tokens": 9, "finish_reason": "length"}])])
    fields = [s.details["info"]["echo_fields"]["fields"] for s in group.samples]
    assert fields[0] == {"answer": "from-config", "tests": ["assert True"], "level": "hard",
                         "response_tokens": 1, "finish_reason": "stop"}  # config kwargs win over fields
    assert fields[1]["response_tokens"] == 9 and fields[1]["finish_reason"] == "length"


def test_async_reward_calls_run_concurrently(mod):
    scorer = scorer_for(RewardSpec(f"{mod}:async_exact"))
    t0 = time.monotonic()
    groups = scorer.score_groups([("q", ["1", "2", "3", "4"], {"answer": "3"})] * 4)  # 16 calls of 0.2 s
    assert time.monotonic() - t0 < 2.0  # sequential would take 3.2 s
    assert [s.reward for s in groups[0].samples] == [0.0, 0.0, 1.0, 0.0]


def test_batched_reward_gets_one_call_with_columns(mod):
    import importlib

    plugin = importlib.import_module(mod)
    scorer = scorer_for(RewardSpec(f"{mod}:batch_len", kwargs={"scale": 2}))
    groups = scorer.score_groups([("p1", ["a", "bb"], {"answer": "1"}), ("p2", ["ccc"], {"answer": "2", "x": 5})])
    assert [[s.reward for s in g.samples] for g in groups] == [[1.0, 2.0], [3.0]]
    assert plugin.calls == [{"prompts": ["p1", "p1", "p2"], "completions": ["a", "bb", "ccc"],
                             "answer": ["1", "1", "2"], "x": [None, None, 5], "scale": 2}]


@pytest.mark.parametrize("fn, kind, error", [
    ("raises", "exception", "RuntimeError: cannot score bad"),
    ("text", "non_numeric", "returned str '1.0', not a number"),
    ("nan", "non_finite", "returned nan"),
    ("sleeps", "timeout", "limit"),
])
def test_each_failure_kind_is_marked_counted_and_scored_by_the_fixed_score(mod, fn, kind, error):
    scorer = scorer_for(RewardSpec(f"{mod}:{fn}"), RewardSpec(f"{mod}:length", weight=0.0),
                        on_failure="fixed_score", failure_score=-1.0, timeout_s=0.5)
    [group] = scorer.score_groups([("q", ["ok", "bad", "ok"], {})])
    good, bad, good_again = group.samples
    assert (good.reward, good.failure, good_again.reward) == (1.0, None, 1.0)
    assert (bad.reward, bad.failure) == (-1.0, kind)
    assert bad.details["failure"] == kind and error in bad.details["error"]
    assert bad.details["error"].startswith(f"{fn}: ")
    assert bad.details["scores"] == {"length": 3.0}  # the rewards that did work still show
    assert not group.drop
    counters = scorer.counters()
    assert counters[f"failures/{kind}"] == 1 and counters["failed_samples"] == 1
    assert counters["scored_samples"] == 3
    assert sum(counters[f"failures/{k}"] for k in FAILURE_KINDS) == 1


def test_drop_group_policy_drops_only_the_group_with_a_failure(mod):
    scorer = scorer_for(RewardSpec(f"{mod}:raises"), on_failure="drop_group")
    groups = scorer.score_groups([("q1", ["ok", "ok"], {}), ("q2", ["ok", "bad"], {})])
    assert [g.drop for g in groups] == [False, True]
    assert groups[1].samples[1].failure == "exception" and groups[1].samples[1].reward == 0.0
    assert scorer.counters()["dropped_groups"] == 1


def test_a_hung_reward_does_not_hold_up_the_rest(mod):
    scorer = scorer_for(RewardSpec(f"{mod}:sleeps"), timeout_s=0.3)
    t0 = time.monotonic()
    [group] = scorer.score_groups([("q", ["bad", "ok", "ok", "ok"], {})])
    assert time.monotonic() - t0 < 2.0
    assert [s.failure for s in group.samples] == ["timeout", None, None, None]
    assert scorer.counters()["abandoned_threads"] == 1


def test_inline_rewards_run_in_the_calling_thread_and_the_others_in_a_watched_one(mod):
    import threading

    scorer = scorer_for(RewardSpec(f"{mod}:where", run_in="inline", label="inline"),
                        RewardSpec(f"{mod}:where", label="thread"))
    [group] = scorer.score_groups([("q", ["a", "b"], {})])
    scores = [s.details["scores"] for s in group.samples]
    assert {d["inline"] for d in scores} == {float(threading.get_ident())}
    assert threading.get_ident() not in {d["thread"] for d in scores}
    assert [r.inline for r in scorer.rewards] == [True, False]


def test_auto_runs_the_builtins_registered_inline_in_the_calling_thread():
    scorer = scorer_for(RewardSpec("exact_answer"), RewardSpec("length_penalty", kwargs={"max_len": 8, "buffer": 2}),
                        RewardSpec("format", kwargs={"pattern": "x"}))
    assert [(r.inline, r.in_pool) for r in scorer.rewards] == [(True, False), (True, False), (False, False)]
    [group] = scorer.score_groups([("q", ["7"], {"answer": "07"}, [{"response_tokens": 7}])])
    assert group.samples[0].details["scores"] == {"exact_answer": 1.0, "length_penalty": -0.5, "format": 0.0,
                                                  "format/pattern": 0.0}


def test_an_inline_call_past_its_limit_is_a_timeout_once_it_returns(mod):
    scorer = scorer_for(RewardSpec(f"{mod}:slow", run_in="inline", timeout_s=0.1))
    [group] = scorer.score_groups([("q", ["a"], {})])
    assert group.samples[0].failure == "timeout" and scorer.counters()["abandoned_threads"] == 0


def test_an_async_reward_cannot_run_inline(mod):
    with pytest.raises(RewardError, match="run_in=inline is for plain functions"):
        scorer_for(RewardSpec(f"{mod}:async_exact", run_in="inline"))


def test_weighted_sum_that_overflows_is_non_finite(mod):
    [group] = scorer_for(RewardSpec(f"{mod}:huge", weight=10.0)).score_groups([("q", ["a"], {})])
    assert group.samples[0].failure == "non_finite" and group.samples[0].reward == 0.0


def test_details_survive_json_and_msgpack(mod):
    scorer = scorer_for(RewardSpec(f"{mod}:exact"), RewardSpec(f"{mod}:raises"))
    [group] = scorer.score_groups([("q", ["42", "bad"], {"answer": "42"})])
    for s in group.samples:
        assert json.loads(json.dumps(s.details)) == s.details
        assert msgpack.unpackb(msgpack.packb(s.details)) == s.details


def test_counters_accumulate_over_calls():
    scorer = build_scorer()
    for _ in range(3):
        scorer.score_groups([("1+1=", ["2", "3"], {"answer": "2"})])
    counters = scorer.counters()
    assert counters["scored_samples"] == 6 and counters["failed_samples"] == 0
    assert counters["pool_restarts"] == 0 and counters["abandoned_threads"] == 0


def test_missing_field_is_an_exception_not_a_crash():
    [group] = build_scorer().score_groups([("1+1=", ["2"], {})])  # exact_answer needs `answer`
    assert group.samples[0].failure == "exception" and "answer" in group.samples[0].details["error"]


def test_score_one_sample():
    assert build_scorer().score("1+1=", "2", answer="2").reward == 1.0


def test_empty_input_gives_empty_output():
    assert build_scorer().score_groups([]) == []


def test_build_scorer_fails_fast_on_a_bad_config():
    with pytest.raises(RewardError, match="unknown reward 'exact'"):
        build_scorer(RewardConfig(rewards=[RewardSpec("exact")]))


def test_reward_metrics_means_each_score_over_the_samples_that_have_it():
    details = [{"scores": {"math": 1.0, "format": 0.5}}, {"scores": {"math": 0.0}}, {"failure": "timeout"}]
    assert reward_metrics(details) == {"reward/format": 0.5, "reward/math": 0.5}
