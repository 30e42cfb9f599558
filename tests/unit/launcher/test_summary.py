"""The run summary's before/after figures, from the first and last evaluations."""
import pytest

from launcher.loop import before_after


def test_greedy_and_sampled_gains_in_points():
    out = before_after({"held_out_success": 0.293, "held_out_sampled_success": 0.211},
                        {"held_out_success": 0.644, "held_out_sampled_success": 0.465})
    assert out["held_out_success_before"] == 0.293 and out["held_out_success_after"] == 0.644
    assert out["improvement_points"] == pytest.approx(35.1)
    assert out["improvement_points_sampled"] == pytest.approx(25.4)


def test_no_sampled_figures_when_sampled_evaluation_is_off():
    out = before_after({"held_out_success": 0.5}, {"held_out_success": 0.4})
    assert out == {"held_out_success_before": 0.5, "held_out_success_after": 0.4, "improvement_points": -10.0}
