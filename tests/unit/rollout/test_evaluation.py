"""pass@k and mean@k against values computed by hand."""
import pytest

from rollout.evaluation import pass_at_k, summarize


def test_pass_at_k_by_hand():
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0  # n = k: any sample passed
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # one draw from 4, one of them passes
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # C(2,2) / C(4,2) = 1/6 fail both
    assert pass_at_k(5, 5, 3) == 1.0


def test_summary_over_prompts():
    # prompt A: rewards 1, 0, 0, 0 -> mean 0.25, pass@4 1; prompt B: all 0 -> 0, 0; prompt C: 1, 1, 1, 0.5 (0.5 fails)
    out = summarize([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0.5]], k=4, pass_threshold=1.0)
    assert out == {"mean@4": pytest.approx((0.25 + 0 + 0.875) / 3), "pass@4": pytest.approx(2 / 3)}


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)
    with pytest.raises(ValueError):
        summarize([], 1, 1.0)
