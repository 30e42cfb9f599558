"""Advantage estimators (trainer.advantages) against hand-computed values.

GRPO, RLOO and batch-normalised advantages are one number per sequence of a group; GAE is per token.
Every expected number is worked out in the comment next to it.
"""
from __future__ import annotations

import math

import pytest
import torch

from plugins import PluginError
from trainer.advantages import ADVANTAGES, batch_normalized_advantages, gae, grpo_advantages, rloo_advantages
from trainer.config import AdvantageConfig

def sequence_advantages(rewards, group_ids, *, name, **cfg):
    """The registered sequence-level estimator `name`, as the trainer calls it."""
    return ADVANTAGES.resolve(name)(rewards, group_ids, AdvantageConfig(name=name, **cfg))


SQRT2 = math.sqrt(2)
SQRT5 = math.sqrt(5)

# ---------------------------------------------------------------- grpo_advantages


def test_grpo_advantages_without_std_scaling_are_centred_rewards():
    # mean([1, 0, 0, 1]) = 0.5 -> [1 - 0.5, 0 - 0.5, 0 - 0.5, 1 - 0.5]
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_grpo_advantages_scale_by_population_std():
    # centred [0.5, -0.5, -0.5, 0.5]; population std = sqrt((4 * 0.25) / 4) = 0.5
    # (sample std would be sqrt(1 / 3) = 0.577 and give 0.866); eps = 0 -> 0.5 / 0.5 = 1
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, -1.0, 1.0]))


def test_grpo_advantages_default_eps_is_added_to_std():
    # 0.5 / (0.5 + 1e-6) = 1 / 1.000002 = 0.999998
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(adv, torch.tensor([0.999998, -0.999998, -0.999998, 0.999998]), rtol=0, atol=1e-6)


def test_grpo_advantages_one_success_in_four():
    # mean = 0.25; centred [0.75, -0.25, -0.25, -0.25]
    # var = (0.5625 + 3 * 0.0625) / 4 = 0.75 / 4 = 0.1875; std = sqrt(0.1875) = sqrt(3) / 4 = 0.4330127
    # 0.75 / (sqrt(3) / 4) = 3 / sqrt(3) = sqrt(3) = 1.7320508 ; -0.25 / (sqrt(3) / 4) = -1 / sqrt(3) = -0.5773503
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([1.7320508, -0.5773503, -0.5773503, -0.5773503]))


@pytest.mark.parametrize("value", [0.0, 1.0])
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_grpo_advantages_all_equal_rewards_give_zeros(value, scale_by_std):
    # centred = [0, 0, 0, 0]; std = 0 -> 0 / (0 + 1e-6) = 0
    adv = grpo_advantages(torch.full((4,), value), scale_by_std=scale_by_std)
    assert torch.equal(adv, torch.zeros(4))


def test_grpo_advantages_all_equal_fractional_rewards_give_zeros():
    # every reward is 0.7 -> centred [0] * 8 -> A = [0] * 8 (the group carries no signal)
    adv = grpo_advantages(torch.full((8,), 0.7))
    torch.testing.assert_close(adv, torch.zeros(8), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- rloo_advantages


def test_rloo_advantages_subtract_the_mean_of_the_other_samples():
    # rewards [1, 0, 0, 1], G = 4, sum = 2
    #   A_0 = 1 - (2 - 1) / 3 = 1 - 1/3 = 2/3      A_1 = 0 - (2 - 0) / 3 = -2/3
    # (same as G / (G - 1) * (r - mean) = 4/3 * [0.5, -0.5, -0.5, 0.5])
    adv = rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))


def test_rloo_advantages_one_success_in_four():
    # rewards [1, 0, 0, 0], sum = 1
    #   A_0 = 1 - (1 - 1) / 3 = 1        A_j = 0 - (1 - 0) / 3 = -1/3 for j = 1..3
    adv = rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(adv, torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))


def test_rloo_advantages_pair_is_the_difference_of_the_two_rewards():
    # G = 2, rewards [3, 1]: A_0 = 3 - 1 = 2 ; A_1 = 1 - 3 = -2
    adv = rloo_advantages(torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(adv, torch.tensor([2.0, -2.0]))


@pytest.mark.parametrize("rewards", [[1.0], []])
def test_rloo_advantages_need_at_least_two_samples(rewards):
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.tensor(rewards))


@pytest.mark.parametrize("value", [0.0, 1.0, 0.7])
def test_rloo_advantages_all_equal_rewards_give_zeros(value):
    # every r_i equals the mean of the others -> r_i - mean_{j != i} r_j = 0 exactly
    adv = rloo_advantages(torch.full((5,), value))
    assert torch.equal(adv, torch.zeros(5))


# ---------------------------------------------------------------- batch_normalized_advantages
# Two groups of unequal size: g1 = [4, 0] (2 samples), g2 = [2, 2, 0, 0] (4 samples).


def _two_groups():
    return [torch.tensor([4.0, 0.0]), torch.tensor([2.0, 2.0, 0.0, 0.0])]


def test_batch_normalized_group_centre_divides_by_the_std_of_the_whole_batch():
    # centre each group on its own mean: g1 mean 2 -> [2, -2] ; g2 mean 1 -> [1, 1, -1, -1]
    # all six centred values: [2, -2, 1, 1, -1, -1], mean 0, var = (4 + 4 + 1 + 1 + 1 + 1) / 6 = 12 / 6 = 2
    # std = sqrt(2) -> g1: [2/sqrt2, -2/sqrt2] = [sqrt2, -sqrt2] ; g2: [1/sqrt2, 1/sqrt2, -1/sqrt2, -1/sqrt2]
    # (per-group GRPO would give [1, -1] and [1, 1, -1, -1]: the batch std keeps g1's larger spread)
    g1, g2 = batch_normalized_advantages(_two_groups(), center="group", eps=0.0)
    torch.testing.assert_close(g1, torch.tensor([SQRT2, -SQRT2]))
    torch.testing.assert_close(g2, torch.tensor([1 / SQRT2, 1 / SQRT2, -1 / SQRT2, -1 / SQRT2]))


def test_batch_normalized_batch_centre_uses_the_batch_mean_and_std():
    # all rewards [4, 0, 2, 2, 0, 0]: mean = 8 / 6 = 4/3
    # centred [8/3, -4/3, 2/3, 2/3, -4/3, -4/3]; squares (64 + 16 + 4 + 4 + 16 + 16) / 9 = 120 / 9
    # var = (120 / 9) / 6 = 20 / 9 -> std = sqrt(20) / 3 = 2 sqrt5 / 3 = 1.4907120
    # 8/3 / (2 sqrt5 / 3) = 4/sqrt5 = 1.7888544 ; -4/3 -> -2/sqrt5 = -0.8944272 ; 2/3 -> 1/sqrt5 = 0.4472136
    g1, g2 = batch_normalized_advantages(_two_groups(), center="batch", eps=0.0)
    torch.testing.assert_close(g1, torch.tensor([4 / SQRT5, -2 / SQRT5]))
    torch.testing.assert_close(g2, torch.tensor([1 / SQRT5, 1 / SQRT5, -2 / SQRT5, -2 / SQRT5]))


def test_batch_normalized_group_centre_uniform_group_is_zero_and_still_counts_in_the_std():
    # g1 = [1, 1] (all equal) -> [0, 0] ; g2 = [2, 0] -> mean 1 -> [1, -1]
    # flat [0, 0, 1, -1]: var = (0 + 0 + 1 + 1) / 4 = 0.5 -> std = 1/sqrt2 -> g2 = [sqrt2, -sqrt2]
    g1, g2 = batch_normalized_advantages([torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0])], eps=0.0)
    assert torch.equal(g1, torch.zeros(2))
    torch.testing.assert_close(g2, torch.tensor([SQRT2, -SQRT2]))


@pytest.mark.parametrize("center, groups", [
    ("group", [[1.0, 1.0], [0.0, 0.0, 0.0]]),  # each group centred on its own mean -> all zeros, std 0
    ("batch", [[0.7, 0.7], [0.7, 0.7, 0.7]]),  # batch mean 0.7 (to an ulp) -> centred ~0, std < eps
])
def test_batch_normalized_zero_std_gives_zeros(center, groups):
    out = batch_normalized_advantages([torch.tensor(g) for g in groups], center=center)
    assert [o.tolist() for o in out] == [[0.0, 0.0], [0.0, 0.0, 0.0]]


def test_batch_normalized_unknown_centre_raises():
    with pytest.raises(ValueError, match="center"):
        batch_normalized_advantages(_two_groups(), center="global")


# ---------------------------------------------------------------- sequence_advantages
# Interleaved groups: group 0 at rows 0, 2, 3, 5 with rewards [1, 0, 0, 1]; group 1 at rows 1, 4 with [3, 1].
REWARDS = torch.tensor([1.0, 3.0, 0.0, 0.0, 1.0, 1.0])
GROUP_IDS = torch.tensor([0, 1, 0, 0, 1, 0])


def test_sequence_advantages_grpo_without_std_per_interleaved_group():
    # group 0 [1, 0, 0, 1]: mean 0.5 -> [0.5, -0.5, -0.5, 0.5] at rows 0, 2, 3, 5
    # group 1 [3, 1]: mean 2 -> [1, -1] at rows 1, 4
    adv = sequence_advantages(REWARDS, GROUP_IDS, name="grpo", scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([0.5, 1.0, -0.5, -0.5, -1.0, 0.5]))


def test_sequence_advantages_grpo_with_std_per_interleaved_group():
    # group 0: centred [0.5, -0.5, -0.5, 0.5], std 0.5 -> [1, -1, -1, 1]
    # group 1: centred [1, -1], std 1 -> [1, -1]      (each / (1 + 1e-6 or 0.5 + 1e-6): within 1e-5)
    adv = sequence_advantages(REWARDS, GROUP_IDS, name="grpo", scale_by_std=True)
    torch.testing.assert_close(adv, torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0, 1.0]), rtol=0, atol=1e-5)


def test_sequence_advantages_group_ids_are_labels_not_positions():
    # ids 7 and 3 instead of 0 and 1: the same two groups -> the same advantages as above
    adv = sequence_advantages(REWARDS, torch.tensor([7, 3, 7, 7, 3, 7]), name="grpo", scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([0.5, 1.0, -0.5, -0.5, -1.0, 0.5]))


def test_sequence_advantages_rloo_per_interleaved_group():
    # group 0 [1, 0, 0, 1] -> [1 - 1/3, 0 - 2/3, 0 - 2/3, 1 - 1/3] = [2/3, -2/3, -2/3, 2/3]
    # group 1 [3, 1] -> [3 - 1, 1 - 3] = [2, -2]
    adv = sequence_advantages(REWARDS, GROUP_IDS, name="rloo")
    torch.testing.assert_close(adv, torch.tensor([2 / 3, 2.0, -2 / 3, -2 / 3, -2.0, 2 / 3]))


def test_sequence_advantages_batch_with_group_centre():
    # centred: group 0 [0.5, -0.5, -0.5, 0.5], group 1 [1, -1]
    # var over all six = (4 * 0.25 + 2 * 1) / 6 = 3 / 6 = 0.5 -> std = 1/sqrt2
    # group 0: 0.5 * sqrt2 = 0.7071068 ; group 1: 1 * sqrt2 = 1.4142136   (eps 1e-6: within 1e-5)
    adv = sequence_advantages(REWARDS, GROUP_IDS, name="batch")
    h = 1 / SQRT2
    torch.testing.assert_close(adv, torch.tensor([h, SQRT2, -h, -h, -SQRT2, h]), rtol=0, atol=1e-5)


def test_sequence_advantages_batch_with_batch_centre():
    # rewards [1, 3, 0, 0, 1, 1]: mean 6 / 6 = 1 -> centred [0, 2, -1, -1, 0, 0]
    # var = (0 + 4 + 1 + 1 + 0 + 0) / 6 = 1 -> std 1 -> advantages = centred (within 1e-5)
    adv = sequence_advantages(REWARDS, GROUP_IDS, name="batch", batch_center="batch")
    torch.testing.assert_close(adv, torch.tensor([0.0, 2.0, -1.0, -1.0, 0.0, 0.0]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["ppo", ""])
def test_unknown_advantage_name_raises_listing_the_registered_ones(name):
    with pytest.raises(PluginError, match="unknown advantage .*registered names: batch, gae, grpo, rloo"):
        ADVANTAGES.resolve(name)


def test_only_gae_needs_a_critic():
    from trainer.advantages import uses_critic

    assert [n for n in ADVANTAGES if uses_critic(ADVANTAGES.resolve(n))] == ["gae"]


# ---------------------------------------------------------------- gae
# Layout of one row: position 0 is prompt, the mask marks the response, later positions are padding.


def _row(values) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.float32)


def test_gae_gamma_1_lambda_1_is_return_minus_value():
    # response at positions 1..3, reward 1 on the last response token; V = [., 0.5, 0.25, 0.75, .]
    # gamma = lam = 1: A_t = (sum of rewards from t on) - V_t = 1 - V_t -> [0.5, 0.75, 0.25]
    # step by step: delta_3 = 1 + 0 - 0.75 = 0.25 ; delta_2 = 0 + 0.75 - 0.25 = 0.5 ; delta_1 = 0 + 0.25 - 0.5 = -0.25
    #               A_3 = 0.25 ; A_2 = 0.5 + 0.25 = 0.75 ; A_1 = -0.25 + 0.75 = 0.5
    # returns = A + V = [1, 1, 1]
    mask = torch.tensor([[False, True, True, True, False]])
    adv, ret = gae(_row([0, 0, 0, 1, 0]), _row([0, 0.5, 0.25, 0.75, 0]), mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, _row([0, 0.5, 0.75, 0.25, 0]))
    torch.testing.assert_close(ret, _row([0, 1, 1, 1, 0]))


def test_gae_gamma_09_lambda_05_step_by_step():
    # rewards r_1 = 0.5, r_2 = 0, r_3 = 1 ; values V_1 = 0.4, V_2 = 0.6, V_3 = 0.8 ; V_4 = 0 (episode over)
    # delta_3 = 1 + 0.9 * 0 - 0.8 = 0.2
    # delta_2 = 0 + 0.9 * 0.8 - 0.6 = 0.72 - 0.6 = 0.12
    # delta_1 = 0.5 + 0.9 * 0.6 - 0.4 = 0.5 + 0.54 - 0.4 = 0.64
    # gamma * lam = 0.45
    # A_3 = 0.2 ; A_2 = 0.12 + 0.45 * 0.2 = 0.21 ; A_1 = 0.64 + 0.45 * 0.21 = 0.64 + 0.0945 = 0.7345
    # returns: 0.7345 + 0.4 = 1.1345 ; 0.21 + 0.6 = 0.81 ; 0.2 + 0.8 = 1.0
    mask = torch.tensor([[False, True, True, True, False]])
    adv, ret = gae(_row([0, 0.5, 0, 1, 0]), _row([0, 0.4, 0.6, 0.8, 0]), mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, _row([0, 0.7345, 0.21, 0.2, 0]))
    torch.testing.assert_close(ret, _row([0, 1.1345, 0.81, 1.0, 0]))


def test_gae_prompt_and_padding_positions_stay_zero_whatever_their_rewards_and_values():
    # same response as above, but prompt (0) and padding (4, 5) carry reward 5 and value 9:
    # they must neither bootstrap (V_4 = 9 is not used at t = 3) nor receive an advantage or return.
    mask = torch.tensor([[False, True, True, True, False, False]])
    adv, ret = gae(_row([5, 0.5, 0, 1, 5, 5]), _row([9, 0.4, 0.6, 0.8, 9, 9]), mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, _row([0, 0.7345, 0.21, 0.2, 0, 0]))
    torch.testing.assert_close(ret, _row([0, 1.1345, 0.81, 1.0, 0, 0]))


def test_gae_two_rows_with_different_response_spans():
    # gamma = 0.5, lam = 1 -> A_t = discounted return G_t - V_t
    # row 0: response at 1..2, r_2 = 2, V = [., 1, 1]; V at 3 is 7 but position 3 is padding (no bootstrap)
    #   G_2 = 2, G_1 = 0.5 * 2 = 1 -> A = [1 - 1, 2 - 1] = [0, 1] ; returns [1, 2]
    #   (deltas: delta_2 = 2 - 1 = 1 ; delta_1 = 0 + 0.5 * 1 - 1 = -0.5 ; A_1 = -0.5 + 0.5 * 1 = 0)
    # row 1: response at 2..4, r_4 = 4, V = [2, 2, 2]
    #   G_4 = 4, G_3 = 2, G_2 = 1 -> A = [1 - 2, 2 - 2, 4 - 2] = [-1, 0, 2] ; returns [1, 2, 4]
    #   (deltas: d_4 = 4 - 2 = 2 ; d_3 = 0 + 0.5 * 2 - 2 = -1 ; d_2 = -1 ; A_3 = -1 + 0.5 * 2 = 0 ; A_2 = -1 + 0 = -1)
    F, T = False, True
    mask = torch.tensor([[F, T, T, F, F], [F, F, T, T, T]])
    rewards = torch.tensor([[0.0, 0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 4.0]])
    values = torch.tensor([[0.0, 1.0, 1.0, 7.0, 7.0], [0.0, 0.0, 2.0, 2.0, 2.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.5, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0, 2.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.0, 1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 1.0, 2.0, 4.0]]))


def test_gae_returns_are_advantages_plus_values_on_the_mask_and_zero_off_it():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    F, T = False, True
    mask = torch.tensor([[F, T, T, T, T, F, F], [F, F, F, T, T, T, T], [T, T, F, F, F, F, F]])
    adv, ret = gae(rewards, values, mask, gamma=0.95, lam=0.9)
    torch.testing.assert_close(ret, torch.where(mask, adv + values, 0.0))
    assert torch.equal(adv[~mask], torch.zeros(int((~mask).sum())))
