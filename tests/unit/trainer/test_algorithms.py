"""GRPO advantages, token log-probs and the decoupled PPO loss, against hand-computed values.

Loss tests use eps_low = 0.2, eps_high = 0.28 (clip range [0.8, 1.28]) and max_behaviour_weight = 5.
Log-probs are written as logs of round numbers so that ratios and weights are round numbers:
r = exp(logp - prox_logp), w = exp(prox_logp - behaviour_logp).
"""
from __future__ import annotations

import math

import pytest
import torch

from trainer.algorithms import decoupled_ppo_loss, grpo_advantages, token_logprobs

LN = math.log
CLIP = dict(eps_low=0.2, eps_high=0.28, max_behaviour_weight=5.0)


def _t(values, dtype=torch.float32, requires_grad=False) -> torch.Tensor:
    return torch.tensor([values], dtype=dtype, requires_grad=requires_grad)  # [1, T]


def _loss(logp, prox, behaviour, adv, mask=None, normalizer=1.0, requires_grad=False):
    logp_t = _t(logp, requires_grad=requires_grad)
    mask_t = _t(mask if mask is not None else [True] * len(logp), dtype=torch.bool)
    loss, stats = decoupled_ppo_loss(logp_t, _t(prox), _t(behaviour), _t(adv), mask_t,
                                     normalizer=normalizer, **CLIP)
    return loss, stats, logp_t


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


# ---------------------------------------------------------------- token_logprobs


def test_token_logprobs_two_way_softmax():
    # logits [0, ln 3] -> exp = [1, 3], sum 4 -> probs [1/4, 3/4]
    logits = torch.tensor([[[0.0, LN(3)], [0.0, LN(3)]]])  # [1, 2, 2]
    out = token_logprobs(logits, torch.tensor([[1, 0]]))
    # [ln(3/4), ln(1/4)] = [-0.2876821, -1.3862944]
    torch.testing.assert_close(out, torch.tensor([[-0.2876821, -1.3862944]]))


def test_token_logprobs_picks_each_positions_target():
    logits = torch.tensor([
        [[0.0, LN(2), LN(5)], [0.0, LN(3), 0.0]],  # exp sums: 1+2+5 = 8 ; 1+3+1 = 5
        [[5.0, 5.0, 5.0], [LN(2), LN(2), 0.0]],  # exp sums: 3 * e^5 (uniform) ; 2+2+1 = 5
    ])  # [B=2, T=2, V=3]
    targets = torch.tensor([[2, 1], [0, 2]])
    out = token_logprobs(logits, targets)
    expected = torch.tensor([
        [-0.4700036, -0.5108256],  # ln(5/8), ln(3/5)
        [-1.0986123, -1.6094379],  # ln(1/3), ln(1/5)
    ])
    assert out.shape == (2, 2)
    torch.testing.assert_close(out, expected)


def test_token_logprobs_of_bfloat16_logits_are_computed_in_float32():
    # logits [0, 3] (exact in bf16): logsumexp = ln(1 + e^3) = ln(21.0855369) = 3.0485874
    # target 0 -> 0 - 3.0485874 ; target 1 -> 3 - 3.0485874 = -0.0485874
    # (in bf16 these would come out as -3.046875 and -0.0485840, errors 1.7e-3 and 3.4e-6)
    logits = torch.tensor([[[0.0, 3.0], [0.0, 3.0]]], dtype=torch.bfloat16)
    out = token_logprobs(logits, torch.tensor([[0, 1]]))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[-3.0485874, -0.0485874]]), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- decoupled_ppo_loss


def test_decoupled_ppo_loss_ratio_inside_clip_range_is_unclipped():
    # r = 1.1 in [0.8, 1.28], w = 1, A = 2: min(1.1 * 2, 1.1 * 2) = 2.2 -> loss = -2.2 / 1
    loss, stats, _ = _loss([LN(1.1)], [0.0], [0.0], [2.0])
    assert loss.item() == pytest.approx(-2.2, rel=1e-6)
    assert stats.clip_fraction == 0.0


def test_decoupled_ppo_loss_clips_high_ratio_with_positive_advantage():
    # r = 1.5 > 1.28, A = +2: unclipped 3.0, clipped 1.28 * 2 = 2.56 -> min = 2.56 -> loss = -2.56
    loss, stats, _ = _loss([LN(1.5)], [0.0], [0.0], [2.0])
    assert loss.item() == pytest.approx(-2.56, rel=1e-6)
    assert stats.clip_fraction == 1.0


def test_decoupled_ppo_loss_does_not_clip_high_ratio_with_negative_advantage():
    # r = 1.5, A = -2: unclipped -3.0, clipped 1.28 * -2 = -2.56 -> min = -3.0 (pessimistic) -> loss = 3.0
    loss, stats, _ = _loss([LN(1.5)], [0.0], [0.0], [-2.0])
    assert loss.item() == pytest.approx(3.0, rel=1e-6)
    assert stats.clip_fraction == 0.0


def test_decoupled_ppo_loss_clips_low_ratio_with_negative_advantage():
    # r = 0.5 < 0.8, A = -2: unclipped -1.0, clipped 0.8 * -2 = -1.6 -> min = -1.6 -> loss = 1.6
    loss, stats, _ = _loss([LN(0.5)], [0.0], [0.0], [-2.0])
    assert loss.item() == pytest.approx(1.6, rel=1e-6)
    assert stats.clip_fraction == 1.0


def test_decoupled_ppo_loss_does_not_clip_low_ratio_with_positive_advantage():
    # r = 0.5, A = +2: unclipped 1.0, clipped 0.8 * 2 = 1.6 -> min = 1.0 -> loss = -1.0
    loss, stats, _ = _loss([LN(0.5)], [0.0], [0.0], [2.0])
    assert loss.item() == pytest.approx(-1.0, rel=1e-6)
    assert stats.clip_fraction == 0.0


def test_decoupled_ppo_loss_trust_region_is_centred_on_prox_not_behaviour():
    # prox = ln 0.6, logp = ln 0.9 -> r = 0.9 / 0.6 = 1.5 (clipped to 1.28); behaviour = ln 0.3 -> w = 0.6 / 0.3 = 2
    # A = 1: min(1.5, 1.28) = 1.28 -> loss = -(2 * 1.28) / 1 = -2.56
    loss, stats, _ = _loss([LN(0.9)], [LN(0.6)], [LN(0.3)], [1.0])
    assert loss.item() == pytest.approx(-2.56, rel=1e-6)
    assert stats.behaviour_weight_mean == pytest.approx(2.0, rel=1e-6)


def test_decoupled_ppo_loss_masks_token_whose_behaviour_weight_exceeds_max():
    # token 0: w = 0.6 / 0.1 = 6 > 5 -> dropped ; token 1: w = 0.4 / 0.2 = 2 -> kept
    # both r = 1 (logp = prox), A = 1: loss = -(2 * 1 * 1) / 2 = -1
    loss, stats, _ = _loss([LN(0.6), LN(0.4)], [LN(0.6), LN(0.4)], [LN(0.1), LN(0.2)], [1.0, 1.0],
                           normalizer=2.0)
    assert loss.item() == pytest.approx(-1.0, rel=1e-6)
    assert stats.masked_fraction == pytest.approx(0.5)  # 1 - 1 kept / 2 response tokens
    assert stats.behaviour_weight_mean == pytest.approx(2.0, rel=1e-6)  # 2 / 1 kept


def test_decoupled_ppo_loss_masks_token_with_overflowing_behaviour_weight():
    # token 0: w = exp(0 - (-100)) = e^100 ~ 2.7e43 > float32 max 3.4e38 -> inf > 5 -> must be dropped
    # token 1: r = 1, w = 1, A = 1 -> loss = -(1 * 1 * 1) / 1 = -1 ; d loss / d logp_1 = -w r A / N = -1
    loss, stats, logp = _loss([0.0, 0.0], [0.0, 0.0], [-100.0, 0.0], [1.0, 1.0], requires_grad=True)
    loss.backward()
    assert loss.item() == pytest.approx(-1.0, rel=1e-6)
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -1.0]]))
    assert stats.behaviour_weight_mean == pytest.approx(1.0)


def test_decoupled_ppo_loss_normalizer_divides_the_sum():
    # r = 1, w = 1, A = [1, 3]: sum of surrogates = 1 + 3 = 4
    loss8, _, _ = _loss([0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 3.0], normalizer=8.0)
    loss2, _, _ = _loss([0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 3.0], normalizer=2.0)
    assert loss8.item() == pytest.approx(-0.5)  # -4 / 8
    assert loss2.item() == pytest.approx(-2.0)  # -4 / 2


def test_decoupled_ppo_loss_masked_positions_contribute_nothing():
    # token 0: r = 1, w = 1, A = 1, counted -> surrogate 1 ; token 1: mask False (A = 100, r = 1.5) -> nothing
    # loss = -1 / 1
    loss, stats, logp = _loss([0.0, LN(1.5)], [0.0, 0.0], [0.0, 0.0], [1.0, 100.0], mask=[True, False],
                              requires_grad=True)
    loss.backward()
    assert loss.item() == pytest.approx(-1.0, rel=1e-6)
    assert logp.grad[0, 1].item() == 0.0
    assert stats.clip_fraction == 0.0  # only token 0 counts, and it is not clipped
    assert stats.masked_fraction == 0.0  # 1 - 1 kept / 1 response token


def test_decoupled_ppo_loss_gradient_flows_only_through_unclipped_logp():
    # t0: r = 1.1 (unclipped), w = 1 / 0.5 = 2, A = 1.5, counted
    # t1: r = 1.5 > 1.28, A = +1 -> clipped branch (constant 1.28)
    # t2: r = 0.5 < 0.8,  A = -1 -> clipped branch (constant -0.8)
    # t3: mask False ; t4: w = 1 / (1/6) = 6 > 5 -> dropped
    # N = 3. d/dlogp of -w r A / N is -w r A / N (dr/dlogp = r):
    #   t0: -2 * 1.1 * 1.5 / 3 = -3.3 / 3 = -1.1 ; t1..t4: 0
    behaviour = torch.tensor([[LN(0.5), 0.0, 0.0, 0.0, LN(1 / 6)]], requires_grad=True)
    logp = _t([LN(1.1), LN(1.5), LN(0.5), LN(1.1), LN(1.1)], requires_grad=True)
    prox = _t([0.0] * 5)
    adv = _t([1.5, 1.0, -1.0, 1.0, 1.0])
    mask = _t([True, True, True, False, True], dtype=torch.bool)
    loss, stats = decoupled_ppo_loss(logp, prox, behaviour, adv, mask, normalizer=3.0, **CLIP)
    loss.backward()

    torch.testing.assert_close(logp.grad, torch.tensor([[-1.1, 0.0, 0.0, 0.0, 0.0]]))
    assert behaviour.grad is None  # w is a constant: nothing flows to mu
    # loss: t0 2 * 1.65 = 3.3 ; t1 1.28 ; t2 -0.8 -> -(3.3 + 1.28 - 0.8) / 3 = -3.78 / 3 = -1.26
    assert loss.item() == pytest.approx(-1.26, rel=1e-6)


def test_decoupled_ppo_loss_stats_by_hand():
    # same five tokens as above; kept = t0, t1, t2 (3), response tokens = t0, t1, t2, t4 (4)
    logp = _t([LN(1.1), LN(1.5), LN(0.5), LN(1.1), LN(1.1)])
    behaviour = _t([LN(0.5), 0.0, 0.0, 0.0, LN(1 / 6)])
    _, stats = decoupled_ppo_loss(logp, _t([0.0] * 5), behaviour, _t([1.5, 1.0, -1.0, 1.0, 1.0]),
                                  _t([True, True, True, False, True], dtype=torch.bool), normalizer=3.0, **CLIP)
    # clipped branch strictly below unclipped: t1 (1.28 < 1.5), t2 (-0.8 < -0.5); not t0 -> 2 / 3
    assert stats.clip_fraction == pytest.approx(2 / 3)
    # 1 - 3 kept / 4 response tokens = 0.25
    assert stats.masked_fraction == pytest.approx(0.25)
    # (2 + 1 + 1) / 3 = 4 / 3
    assert stats.behaviour_weight_mean == pytest.approx(4 / 3, rel=1e-6)
    # mean(prox - logp) over kept = (-ln 1.1 - ln 1.5 - ln 0.5) / 3 = -ln(1.1 * 1.5 * 0.5) / 3
    #                             = -ln(0.825) / 3 = 0.1923719 / 3 = 0.0641240
    assert stats.approx_kl == pytest.approx(0.0641240, rel=1e-5)


def test_decoupled_ppo_loss_plain_ppo_when_prox_equals_behaviour():
    # prox = behaviour = ln 0.5 -> w = 1 ; logp = ln 0.6 -> r = 1.2 (inside), A = -1
    # min(-1.2, -1.2) = -1.2 -> loss = 1.2
    loss, stats, _ = _loss([LN(0.6)], [LN(0.5)], [LN(0.5)], [-1.0])
    assert loss.item() == pytest.approx(1.2, rel=1e-6)
    assert stats.behaviour_weight_mean == pytest.approx(1.0)
