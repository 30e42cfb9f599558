"""What a reward function may return, and how details are made safe to ship."""
from __future__ import annotations

import json
import math

import msgpack
import numpy as np
import pytest

from rewards.schema import (NON_FINITE, NON_NUMERIC, RewardResult, outcome_from_value, to_plain)


@pytest.mark.parametrize("value, score", [
    (1, 1.0),
    (0.25, 0.25),
    (True, 1.0),  # bool is an int: True -> 1.0
    (np.float32(0.5), 0.5),
    (np.int64(-2), -2.0),
])
def test_numbers_of_any_real_type_are_accepted(value, score):
    outcome = outcome_from_value(value)
    assert outcome.failure is None and outcome.score == score


@pytest.mark.parametrize("value", ["1.0", None, [1.0], {"score": 1.0}, 1 + 2j, b"1"])
def test_non_numbers_are_non_numeric(value):
    outcome = outcome_from_value(value)
    assert outcome.failure == NON_NUMERIC
    assert "not a number" in outcome.error


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float64("nan")])
def test_nan_and_inf_are_non_finite(value):
    assert outcome_from_value(value).failure == NON_FINITE


def test_reward_result_keeps_sub_scores_and_info():
    outcome = outcome_from_value(RewardResult(0.5, {"a": 1, "b": np.float32(0.25)}, {"note": "x", "n": 3}))
    assert (outcome.score, outcome.sub_scores, outcome.info) == (0.5, {"a": 1.0, "b": 0.25}, {"note": "x", "n": 3})


def test_reward_result_with_nan_score_is_non_finite():
    assert outcome_from_value(RewardResult(math.nan)).failure == NON_FINITE


def test_reward_result_with_bad_sub_score_fails_naming_it():
    outcome = outcome_from_value(RewardResult(1.0, {"fmt": "yes"}))
    assert outcome.failure == NON_NUMERIC and "'fmt'" in outcome.error
    assert outcome_from_value(RewardResult(1.0, {"fmt": math.nan})).failure == NON_FINITE


def test_to_plain_makes_json_and_msgpack_safe_values():
    class Thing:
        def __repr__(self):
            return "Thing()"

    plain = to_plain({"arr": np.float32(2.5), "nan": math.nan, "none": None, 3: (1, None, Thing()),
                      "nested": {"ok": True}, "long": "x" * 2000})
    assert plain == {"arr": 2.5, "nan": "nan", "3": [1, "Thing()"], "nested": {"ok": True}, "long": "x" * 500}
    assert json.loads(json.dumps(plain)) == plain
    assert msgpack.unpackb(msgpack.packb(plain)) == plain


def test_to_plain_stops_on_self_reference():
    loop: list = []
    loop.append(loop)
    assert isinstance(json.dumps(to_plain(loop)), str)
