"""Built-in cheap rewards on real cases: format (regex / tags) and the DAPO overlong length penalty."""
from __future__ import annotations

import pytest

from rewards.builtin import _check_format_kwargs, _check_length_kwargs, format_reward, length_penalty

R1_STYLE = "<think>7 * 6 is 42</think>\n<answer>42</answer>"


def test_format_required_tags_in_order_scores_one():
    result = format_reward("q", R1_STYLE, required_tags=["think", "answer"])
    assert result.score == 1.0
    assert result.sub_scores == {"tag:think": 1.0, "tag:answer": 1.0}


def test_format_tags_in_wrong_order_score_zero():
    # <think> is found (the search moves past </think>); <answer> must come after it and does not.
    result = format_reward("q", "<answer>42</answer><think>hm</think>", required_tags=["think", "answer"])
    assert result.sub_scores == {"tag:think": 1.0, "tag:answer": 0.0}
    assert result.score == 0.0


def test_format_unclosed_tag_fails_and_partial_gives_fraction():
    completion = "<think>7 * 6 is 42\n<answer>42</answer>"  # </think> missing
    assert format_reward("q", completion, required_tags=["think", "answer"]).score == 0.0
    assert format_reward("q", completion, required_tags=["think", "answer"], partial=True).score == 0.5


def test_format_regex_search_and_fullmatch():
    assert format_reward("q", "so the answer is \\boxed{12}.", pattern=r"\\boxed\{.+\}").score == 1.0
    assert format_reward("q", "no box", pattern=r"\\boxed\{.+\}").score == 0.0
    # fullmatch: the whole (stripped) completion must match, across lines (DOTALL)
    assert format_reward("q", R1_STYLE + "\n", pattern=r"<think>.*</think>\s*<answer>.*</answer>",
                         fullmatch=True).score == 1.0
    assert format_reward("q", R1_STYLE + " trailing", pattern=r"<think>.*</think>\s*<answer>.*</answer>",
                         fullmatch=True).score == 0.0


def test_format_pattern_and_tags_together_partial():
    result = format_reward("q", R1_STYLE, pattern=r"\\boxed", required_tags=["think", "answer"], partial=True)
    assert result.sub_scores == {"pattern": 0.0, "tag:think": 1.0, "tag:answer": 1.0}
    assert result.score == pytest.approx(2 / 3)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "needs `pattern`"),
    ({"pattern": "(unclosed"}, "not a valid regex"),
    ({"required_tags": "think"}, "list of tag names"),
    ({"required_tags": ["<think>"]}, "list of tag names"),
])
def test_format_kwargs_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _check_format_kwargs(kwargs)


@pytest.mark.parametrize("tokens, expected", [
    (0, 0.0),
    (3000, 0.0),  # = max_len - buffer: the last length without penalty
    (3001, -1 / 1000),  # (3000 - 3001) / 1000
    (3500, -0.5),  # (3000 - 3500) / 1000
    (4000, -1.0),  # = max_len: (3000 - 4000) / 1000
    (4001, -1.0),  # past max_len
])
def test_length_penalty_dapo_shape_in_tokens(tokens, expected):
    assert length_penalty("q", "ignored", max_len=4000, buffer=1000, response_tokens=tokens) == pytest.approx(expected)


def test_length_penalty_in_chars():
    assert length_penalty("q", "x" * 15, max_len=20, buffer=10, unit="chars") == pytest.approx(-0.5)  # (10-15)/10


def test_length_penalty_in_tokens_without_the_field_raises():
    with pytest.raises(ValueError, match="response_tokens"):
        length_penalty("q", "abc", max_len=20, buffer=10)


@pytest.mark.parametrize("kwargs", [
    {"max_len": 100},
    {"max_len": 100, "buffer": 0},
    {"max_len": 100, "buffer": 101},
    {"max_len": 100.0, "buffer": 10},
    {"max_len": 100, "buffer": 10, "unit": "words"},
])
def test_length_penalty_kwargs_checked(kwargs):
    with pytest.raises(ValueError):
        _check_length_kwargs(kwargs)
