"""The GVM allocation rule and its integer rounding, against hand-computed values."""
from __future__ import annotations

import math

import pytest

from rollout.allocation import (allocate, bounded_shares, gvm_weights, largest_remainder, neyman_weights,
                                smoothed_pass_rate)


def test_gvm_weights_without_alpha_are_g_over_sqrt_p():
    # alpha = 0: w = G / sqrt(p): 1 / sqrt(0.25) = 2 ; 1 / sqrt(1) = 1 ; 3 / sqrt(0.09) = 10
    assert gvm_weights([0.25, 1.0, 0.09], [1.0, 1.0, 3.0], alpha=0.0) == pytest.approx([2.0, 1.0, 10.0])


def test_gvm_weights_with_paper_constants():
    # alpha = 1e-3, beta = 2: p = 0.25 -> 0.25 + 0.001 / 0.25 = 0.254, sqrt = 0.503984 -> w = 1.984190
    #                          p = 1    -> 1 + 0.001 = 1.001,          sqrt = 1.000500 -> w = 0.999500
    assert gvm_weights([0.25, 1.0], [1.0, 1.0]) == pytest.approx([1 / math.sqrt(0.254), 1 / math.sqrt(1.001)])
    assert gvm_weights([0.25, 1.0], [1.0, 1.0])[0] == pytest.approx(1.984190, rel=1e-6)


def test_gvm_weights_are_zero_for_p_zero_or_g_zero():
    assert gvm_weights([0.0, 0.5, 0.5], [1.0, 0.0, 2.0], alpha=0.0) == pytest.approx([0.0, 0.0, 2 / math.sqrt(0.5)])


def test_small_pass_rates_are_damped_by_alpha():
    # p = 0.001, alpha = 1e-3, beta = 2: p + alpha / p = 0.001 + 1 = 1.001 -> w ~ 1 / 1.0005, far below 1/sqrt(p) ~ 31.6
    assert gvm_weights([0.001], [1.0])[0] == pytest.approx(1 / math.sqrt(1.001))


def test_smoothed_pass_rate_is_the_beta_posterior_mean():
    assert smoothed_pass_rate(0, 0) == pytest.approx(0.5)  # (0 + 1) / (0 + 2): never seen, never zero
    assert smoothed_pass_rate(3, 4) == pytest.approx(4 / 6)  # (3 + 1) / (4 + 2)
    assert smoothed_pass_rate(0, 8, prior_a=0.5, prior_b=4.5) == pytest.approx(0.5 / 13)


def test_largest_remainder_keeps_the_sum_and_breaks_ties_by_index():
    # floors [2, 3, 6] = 11, one unit short; remainders 0.5, 0.5, 0 -> the first 0.5 gets it
    assert largest_remainder([2.5, 3.5, 6.0], 12) == [3, 3, 6]
    # floors [1, 1, 1] = 3, two short; remainders 0.2, 0.7, 0.1 -> indices 1 then 0
    assert largest_remainder([1.2, 1.7, 1.1], 5) == [2, 2, 1]


def test_bounded_shares_proportional_when_no_bound_binds():
    # weights 2 : 1, budget 12 -> 8 and 4, inside [2, 10]
    assert bounded_shares([2.0, 1.0], 12, 2, 10) == pytest.approx([8.0, 4.0])


def test_bounded_shares_caps_a_dominant_prompt_and_resplits_the_rest():
    # trial 10, 1, 1: the cap (excess 4) outweighs the floor (deficit 2): fix index 0 at 6, split 6 over 1 : 1
    assert bounded_shares([10.0, 1.0, 1.0], 12, 2, 6) == pytest.approx([6.0, 3.0, 3.0])


def test_bounded_shares_raises_floor_for_zero_weight_prompts():
    # trial 9, 0, 0: deficit 4 > excess 1: fix indices 1, 2 at 2, then 5 left for index 0
    assert bounded_shares([1.0, 0.0, 0.0], 9, 2, 8) == pytest.approx([5.0, 2.0, 2.0])


def test_zero_total_weight_splits_evenly():
    assert allocate([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], 7, n_min=2, n_max=4) == [3, 2, 2]


@pytest.mark.parametrize("budget", [5, 13])
def test_infeasible_budget_raises(budget):
    with pytest.raises(ValueError, match="cannot be split"):
        allocate([0.5, 0.5, 0.5], [1.0, 1.0, 1.0], budget, n_min=2, n_max=4)


def test_allocate_hand_case_sum_and_bounds():
    # alpha = 0: weights 1/sqrt(0.04) = 5, 1/sqrt(0.25) = 2, 1/sqrt(1) = 1 (sum 8); budget 24 -> 15, 6, 3
    # cap 12: index 0 fixed at 12, 12 left split 2 : 1 -> 8, 4
    n = allocate([0.04, 0.25, 1.0], [1.0, 1.0, 1.0], 24, n_min=2, n_max=12, alpha=0.0)
    assert n == [12, 8, 4]
    assert sum(n) == 24


def test_allocate_p_one_prompt_gets_the_floor_when_others_need_more():
    # p = 1 is always solved: GRPO gets no signal from it. weights (alpha = 0): 1 / sqrt(0.1) = 3.162, 1
    # budget 10 -> 7.60, 2.40; floors 7, 2 and one unit to the larger remainder (0.60 > 0.40) -> 8, 2
    assert allocate([0.1, 1.0], [1.0, 1.0], 10, n_min=2, n_max=8, alpha=0.0) == [8, 2]


def test_allocate_g_zero_prompt_keeps_only_the_floor():
    assert allocate([0.5, 0.5], [1.0, 0.0], 10, n_min=2, n_max=16) == [8, 2]


def test_neyman_weights_are_g_times_the_outcome_std():
    # sqrt(0.5 * 0.5) = 0.5; sqrt(0.1 * 0.9) = 0.3; p = 0 and p = 1 carry no group-baselined gradient
    assert neyman_weights([0.5, 0.1, 0.0, 1.0], [2.0, 1.0, 1.0, 1.0]) == pytest.approx([1.0, 0.3, 0.0, 0.0])


def test_allocate_neyman_favours_prompts_solved_half_the_time():
    # weights 0.5, 0.3, 0.3 * 0.5 = 0.15 (p = 0.9, G = 0.5), 0 (p = 1); budget 24, n_min 2:
    # the p = 1 prompt is fixed at 2, 22 left split 0.5 : 0.3 : 0.15 -> 11.58, 6.95, 3.47
    # floors 11, 6, 3 (sum 20 + 2) and two units to the largest remainders (0.95, 0.58) -> 12, 7, 3, 2
    n = allocate([0.5, 0.1, 0.9, 1.0], [1.0, 1.0, 0.5, 1.0], 24, n_min=2, n_max=16, rule="neyman")
    assert n == [12, 7, 3, 2]


def test_allocate_rejects_an_unknown_rule():
    with pytest.raises(ValueError, match="neyman"):
        allocate([0.5], [1.0], 4, n_min=2, n_max=8, rule="neymann")
