"""The `math` reward through the real math-verify package (runs here, in the main thread)."""
from __future__ import annotations

import pytest

from rewards.math_reward import math_answer


@pytest.mark.parametrize("completion, answer", [
    ("So the answer is \\boxed{\\frac{1}{2}}.", "1/2"),  # boxed LaTeX fraction vs plain fraction
    ("The answer is $0.5$", "\\frac{1}{2}"),  # decimal vs LaTeX fraction
    ("\\boxed{\\dfrac12}", "\\frac{1}{2}"),  # \dfrac with bare digits
    ("\\boxed{\\sqrt{3}/2}", "\\frac{\\sqrt{3}}{2}"),  # gold needs $...$ wrapping to parse
    ("\\boxed{1+2x}", "2x+1"),  # commuted expression
    ("\\boxed{(x-1)(x+1)}", "x^2-1"),  # factored vs expanded
    ("\\boxed{\\frac{\\pi}{2}}", "\\pi/2"),
    ("I think it is 3", 3),  # plain number, gold given as an int
    ("$\\boxed{(1, 2)}$", "(1,2)"),  # interval / tuple
])
def test_math_equivalent_answers_score_one(completion, answer):
    result = math_answer("q", completion, answer=answer)
    assert result.score == 1.0
    assert result.sub_scores == {"answer_found": 1.0}


@pytest.mark.parametrize("completion, answer", [
    ("\\boxed{4}", "3"),
    ("\\boxed{\\frac{1}{3}}", "1/2"),
    ("\\boxed{2x-1}", "2x+1"),
])
def test_math_different_answers_score_zero(completion, answer):
    assert math_answer("q", completion, answer=answer).score == 0.0


def test_math_no_answer_found():
    result = math_answer("q", "I do not know.", answer="42")
    assert result.score == 0.0
    assert result.sub_scores == {"answer_found": 0.0}
    assert result.info == {"extracted": ""}


def test_math_info_reports_the_extracted_answer():
    assert math_answer("q", "\\boxed{7}", answer="7").info == {"extracted": "7"}


def test_math_unparseable_gold_raises():
    with pytest.raises(ValueError, match="cannot parse the gold answer"):
        math_answer("q", "\\boxed{1}", answer="")
