"""Policy losses, KL estimators, entropy, aggregation and the value loss (trainer.losses), by hand.

Clipping uses eps_low = 0.2, eps_high = 0.28 (clip range [0.8, 1.28]) and max_behaviour_weight = 5.
Log-probs are written as logs of round numbers so that ratios and weights are round numbers:
r = exp(logp - centre_logp), w = exp(prox_logp - behaviour_logp).
each policy loss returns the per-token LOSS (already negated): a positive advantage with ratio r gives -r A.
"""
from __future__ import annotations

import math

import pytest
import torch

from trainer.losses import (POLICY_LOSSES, PolicyLossParams, aggregate, kl_estimate, token_entropy, token_logprobs,
                            value_loss)


def policy_loss(name, logp, prox_logp, behaviour_logp, advantages, mask, params):
    """The registered loss `name` (what make_policy_loss binds for the trainer)."""
    return POLICY_LOSSES.resolve(name)(logp, prox_logp, behaviour_logp, advantages, mask, params=params)

LN = math.log
PARAMS = PolicyLossParams(eps_low=0.2, eps_high=0.28, max_behaviour_weight=5.0)


def _t(values, dtype=torch.float32, requires_grad=False) -> torch.Tensor:
    return torch.tensor([values], dtype=dtype, requires_grad=requires_grad)  # [1, T]


def _decoupled(logp, prox, behaviour, adv, mask, normalizer):
    """The former decoupled_ppo_loss(..., normalizer=N): token_mean aggregation over N step tokens."""
    per_token, stats = policy_loss("decoupled_ppo", logp, prox, behaviour, adv, mask, PARAMS)
    return aggregate(per_token, mask, "token_mean", step_tokens=normalizer, step_sequences=1), stats


def _loss(logp, prox, behaviour, adv, mask=None, normalizer=1, requires_grad=False):
    logp_t = _t(logp, requires_grad=requires_grad)
    mask_t = _t(mask if mask is not None else [True] * len(logp), dtype=torch.bool)
    loss, stats = _decoupled(logp_t, _t(prox), _t(behaviour), _t(adv), mask_t, normalizer)
    return loss, stats, logp_t


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


# ---------------------------------------------------------------- decoupled_ppo (token_mean over N tokens)


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
                           normalizer=2)
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
    loss8, _, _ = _loss([0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 3.0], normalizer=8)
    loss2, _, _ = _loss([0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 3.0], normalizer=2)
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
    loss, stats = _decoupled(logp, prox, behaviour, adv, mask, normalizer=3)
    loss.backward()

    torch.testing.assert_close(logp.grad, torch.tensor([[-1.1, 0.0, 0.0, 0.0, 0.0]]))
    assert behaviour.grad is None  # w is a constant: nothing flows to mu
    # loss: t0 2 * 1.65 = 3.3 ; t1 1.28 ; t2 -0.8 -> -(3.3 + 1.28 - 0.8) / 3 = -3.78 / 3 = -1.26
    assert loss.item() == pytest.approx(-1.26, rel=1e-6)


def test_decoupled_ppo_loss_stats_by_hand():
    # same five tokens as above; kept = t0, t1, t2 (3), response tokens = t0, t1, t2, t4 (4)
    logp = _t([LN(1.1), LN(1.5), LN(0.5), LN(1.1), LN(1.1)])
    behaviour = _t([LN(0.5), 0.0, 0.0, 0.0, LN(1 / 6)])
    _, stats = _decoupled(logp, _t([0.0] * 5), behaviour, _t([1.5, 1.0, -1.0, 1.0, 1.0]),
                          _t([True, True, True, False, True], dtype=torch.bool), normalizer=3)
    # clipped branch strictly below unclipped: t1 (1.28 < 1.5), t2 (-0.8 < -0.5); not t0 -> 2 / 3
    assert stats.clip_fraction == pytest.approx(2 / 3)
    # 1 - 3 kept / 4 response tokens = 0.25
    assert stats.masked_fraction == pytest.approx(0.25)
    assert stats.counted_tokens == 3  # the means above are over the 3 kept tokens: the trainer weighs them by it
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


# ---------------------------------------------------------------- ppo_clip


def test_ppo_clip_ratio_is_against_behaviour_with_clip_higher_asymmetry():
    # r = pi / mu (prox = ln 0.1 everywhere must not matter); clip range [0.8, 1.28]
    #   t0: r = 1.25, A = +1: 1.25 < 1.28 -> unclipped (a symmetric 0.2 range would cap it at 1.2) -> loss -1.25
    #   t1: r = 1.30, A = +1: min(1.30, 1.28) = 1.28 -> loss -1.28 (clipped)
    #   t2: r = 0.82, A = -1: min(-0.82, -0.82) -> loss 0.82 (unclipped)
    #   t3: r = 0.78, A = -1: min(-0.78, 0.8 * -1 = -0.8) = -0.8 -> loss 0.8 (clipped)
    behaviour = [LN(0.5)] * 4
    logp = _t([LN(0.5 * 1.25), LN(0.5 * 1.3), LN(0.5 * 0.82), LN(0.5 * 0.78)], requires_grad=True)
    per_token, stats = policy_loss("ppo_clip", logp, _t([LN(0.1)] * 4), _t(behaviour), _t([1.0, 1.0, -1.0, -1.0]),
                                   _t([True] * 4, dtype=torch.bool), PARAMS)
    torch.testing.assert_close(per_token, _t([-1.25, -1.28, 0.82, 0.8]))
    assert stats.clip_fraction == pytest.approx(0.5)  # t1, t3 of 4
    # gradient of -r A w.r.t. logp is -r A on unclipped tokens, 0 on clipped ones:
    #   t0: -1.25 * 1 = -1.25 ; t2: -0.82 * -1 = 0.82
    per_token.sum().backward()
    torch.testing.assert_close(logp.grad, _t([-1.25, 0.0, 0.82, 0.0]))


def test_ppo_clip_dual_clip_bounds_negative_advantage_with_huge_ratio():
    # c = 3; per-token loss = -max(min(r A, clip(r) A), c A) when A < 0
    #   t0: r = 10, A = -1: min(-10, -1.28) = -10 ; max(-10, 3 * -1 = -3) = -3 -> loss 3 (plain PPO: 10)
    #   t1: r = 2,  A = -1: min(-2, -1.28) = -2 ; max(-2, -3) = -2 -> loss 2 (bound not reached)
    #   t2: r = 10, A = +1: min(10, 1.28) = 1.28 (dual clip only acts on A < 0) -> loss -1.28
    logp = _t([LN(10), LN(2), LN(10)], requires_grad=True)
    zeros, adv, mask = _t([0.0] * 3), _t([-1.0, -1.0, 1.0]), _t([True] * 3, dtype=torch.bool)
    dual = PolicyLossParams(eps_low=0.2, eps_high=0.28, dual_clip=3.0)
    per_token, stats = policy_loss("ppo_clip", logp, zeros, zeros, adv, mask, dual)
    torch.testing.assert_close(per_token, _t([3.0, 2.0, -1.28]))
    assert stats.clip_fraction == pytest.approx(2 / 3)  # t0 (dual floor), t2 (upper clip)
    # t0 and t2 are constants; t1: d(-r A)/dlogp = -r A = -2 * -1 = 2
    per_token.sum().backward()
    torch.testing.assert_close(logp.grad, _t([0.0, 2.0, 0.0]))

    plain, _ = policy_loss("ppo_clip", logp.detach(), zeros, zeros, adv, mask, PARAMS)  # dual_clip = 0 (off)
    torch.testing.assert_close(plain, _t([10.0, 2.0, -1.28]))


# ---------------------------------------------------------------- tis


def test_tis_truncates_behaviour_weight_at_cap_and_overflow_gives_cap_not_nan():
    # r = pi / prox = 1 everywhere (logp = prox); w = min(prox / mu, C), C = 2
    #   t0: w = 0.6 / 0.4 = 1.5 (< 2), A = 1 -> loss -1.5 * 1 * 1 = -1.5
    #   t1: w = 0.9 / 0.1 = 9 -> 2 (decoupled_ppo would drop this token: 9 > 5), A = 1 -> loss -2
    #   t2: w = exp(0 - (-100)) = inf in float32 -> 2, A = -1 -> loss -(2 * 1 * -1) = 2
    prox = _t([LN(0.6), LN(0.9), 0.0])
    logp = prox.clone().requires_grad_(True)
    params = PolicyLossParams(eps_low=0.2, eps_high=0.28, tis_cap=2.0)
    per_token, stats = policy_loss("tis", logp, prox, _t([LN(0.4), LN(0.1), -100.0]), _t([1.0, 1.0, -1.0]),
                                   _t([True] * 3, dtype=torch.bool), params)
    torch.testing.assert_close(per_token, _t([-1.5, -2.0, 2.0]))
    assert stats.masked_fraction == 0.0 and stats.counted_tokens == 3  # tis truncates, it drops nothing
    # d(-w r A)/dlogp = -w r A: [-1.5, -2, 2], all finite
    per_token.sum().backward()
    torch.testing.assert_close(logp.grad, _t([-1.5, -2.0, 2.0]))


def test_tis_still_clips_the_ratio_to_prox():
    # prox = ln 0.5, logp = ln 0.75 -> r = 1.5 -> clipped to 1.28 (A = 1); w = 0.5 / 0.5 = 1 -> loss -1.28
    per_token, stats = policy_loss("tis", _t([LN(0.75)]), _t([LN(0.5)]), _t([LN(0.5)]), _t([1.0]),
                                   _t([True], dtype=torch.bool), PARAMS)
    torch.testing.assert_close(per_token, _t([-1.28]))
    assert stats.clip_fraction == 1.0


# ---------------------------------------------------------------- cispo


def test_cispo_value_and_gradient_keep_clipped_tokens():
    # L = -sg(clip(r, 0.8, 1.28)) A log pi with r = pi / mu
    #   t0: pi = mu = 0.5 -> r = 1, A = 2: L = -1 * 2 * ln 0.5 = 2 ln 2 = 1.3862944 ; dL/dlogp = -1 * 2 = -2
    #   t1: pi = 0.6, mu = 0.4 -> r = 1.5 -> 1.28, A = 1: L = -1.28 * ln 0.6 = 1.28 * 0.5108256 = 0.6538568
    #       dL/dlogp = -1.28 (clipped ratio, yet the token keeps its gradient; ppo_clip would give 0)
    #   t2: pi = 0.3, mu = 0.5 -> r = 0.6 -> 0.8, A = -1: L = -0.8 * -1 * ln 0.3 = 0.8 * -1.2039728 = -0.9631782
    #       dL/dlogp = -0.8 * -1 = 0.8
    logp = _t([LN(0.5), LN(0.6), LN(0.3)], requires_grad=True)
    behaviour = _t([LN(0.5), LN(0.4), LN(0.5)], requires_grad=True)
    per_token, stats = policy_loss("cispo", logp, _t([0.0] * 3), behaviour, _t([2.0, 1.0, -1.0]),
                                   _t([True] * 3, dtype=torch.bool), PARAMS)
    torch.testing.assert_close(per_token, _t([1.3862944, 0.6538568, -0.9631782]))
    assert stats.clip_fraction == pytest.approx(2 / 3)  # t1, t2
    per_token.sum().backward()
    torch.testing.assert_close(logp.grad, _t([-2.0, -1.28, 0.8]))
    assert behaviour.grad is None


# ---------------------------------------------------------------- gspo


def test_gspo_sequence_ratio_clipping_and_gradient():
    # mu = 0.25 on every token; s_i = exp(mean over sequence i's tokens of (logp - behaviour_logp))
    # row 0: token ratios [2, 0.5, 1.331], 3 tokens, A = 1
    #   s = (2 * 0.5 * 1.331)^(1/3) = 1.331^(1/3) = 1.1 (inside [0.8, 1.28], although tokens 0 and 1 alone
    #   would be clipped) -> every token's loss = -s A = -1.1
    # row 1: token ratios [1.5, 1.5], position 2 is padding (ratio 100, A 99: ignored), A = 2
    #   s = 1.5 > 1.28 -> min(1.5 * 2, 1.28 * 2) = 2.56 -> every counted token's loss = -2.56, padding 0
    mu = 0.25
    logp = torch.tensor([[LN(mu * 2), LN(mu * 0.5), LN(mu * 1.331)],
                         [LN(mu * 1.5), LN(mu * 1.5), LN(mu * 100)]], requires_grad=True)
    behaviour = torch.full((2, 3), LN(mu))
    adv = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 99.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    per_token, stats = policy_loss("gspo", logp, torch.zeros(2, 3), behaviour, adv, mask, PARAMS)
    torch.testing.assert_close(per_token, torch.tensor([[-1.1, -1.1, -1.1], [-2.56, -2.56, 0.0]]))
    assert stats.clip_fraction == pytest.approx(2 / 5)  # row 1's two counted tokens of 5
    # sequence loss = mean of its tokens' losses = -s A (seq_mean_token_mean over one sequence each):
    # d(-s A)/dlogp_t = -A s * (1/|y|): row 0: -1 * 1.1 / 3 = -0.3666667 each ; row 1 clipped -> 0
    aggregate(per_token, mask, "seq_mean_token_mean", step_tokens=5, step_sequences=1).backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.1 / 3] * 3, [0.0, 0.0, 0.0]]))


def test_gspo_token_ratios_that_cancel_give_sequence_ratio_one():
    # ratios [2, 0.5]: s = sqrt(2 * 0.5) = 1 ; A = -1 -> loss = -(1 * -1) = 1 on both tokens, nothing clipped
    per_token, stats = policy_loss("gspo", _t([LN(0.5), LN(0.125)]), _t([0.0, 0.0]), _t([LN(0.25), LN(0.25)]),
                                   _t([-1.0, -1.0]), _t([True, True], dtype=torch.bool), PARAMS)
    torch.testing.assert_close(per_token, _t([1.0, 1.0]))
    assert stats.clip_fraction == 0.0


@pytest.mark.parametrize("name", ["grpo", "ppo", "dapo", ""])
def test_policy_loss_unknown_name_raises(name):
    zeros, mask = _t([0.0]), _t([True], dtype=torch.bool)
    with pytest.raises(ValueError, match="unknown policy loss"):
        policy_loss(name, zeros, zeros, zeros, zeros, mask, PARAMS)


# ---------------------------------------------------------------- aggregate
# Two sequences of unequal lengths: row 0 has 1 token (value 4), row 1 has 3 tokens (values 1, 2, 3).
# Masked-out positions of row 0 hold 100 and must not count.


def _unequal():
    per_token = torch.tensor([[4.0, 100.0, 100.0], [1.0, 2.0, 3.0]], requires_grad=True)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    return per_token, mask


@pytest.mark.parametrize("mode, expected, weights", [
    # token_mean: (4 + 1 + 2 + 3) / 4 tokens = 10 / 4 = 2.5 ; every token weighs 1/4 (the long answer: 3/4)
    ("token_mean", 2.5, [[1 / 4, 0, 0], [1 / 4, 1 / 4, 1 / 4]]),
    # seq_mean_token_mean: (4 / 1 + (1 + 2 + 3) / 3) / 2 sequences = (4 + 2) / 2 = 3
    #   the single token weighs 1/2, each token of the long one 1/(3 * 2) = 1/6 (each sequence: 1/2)
    ("seq_mean_token_mean", 3.0, [[1 / 2, 0, 0], [1 / 6, 1 / 6, 1 / 6]]),
    # constant (C = 3, the longest length): (4 + 6) / (2 sequences * 3) = 10 / 6 = 1.6666667
    #   every token weighs 1/6, whatever the batch's token count
    ("constant", 10 / 6, [[1 / 6, 0, 0], [1 / 6, 1 / 6, 1 / 6]]),
])
def test_aggregate_weighting_on_unequal_lengths(mode, expected, weights):
    per_token, mask = _unequal()
    out = aggregate(per_token, mask, mode, step_tokens=4, step_sequences=2, constant=3.0)
    assert out.item() == pytest.approx(expected, rel=1e-6)
    out.backward()  # d out / d per_token = the weight each token gets
    torch.testing.assert_close(per_token.grad, torch.tensor(weights))


def test_aggregate_modes_differ_on_unequal_lengths():
    # from above: token_mean 2.5, seq_mean_token_mean 3, constant 10/6 -> three different numbers
    per_token, mask = _unequal()
    got = {m: aggregate(per_token, mask, m, step_tokens=4, step_sequences=2, constant=3.0).item()
           for m in ("token_mean", "seq_mean_token_mean", "constant")}
    assert len({round(v, 5) for v in got.values()}) == 3


# Four rows (T = 3) of lengths 1, 3, 2, 2 -> 8 tokens; row sums 4, 6, 8, 2 -> total 20.
MB_VALUES = torch.tensor([[4.0, 50.0, 50.0], [1.0, 2.0, 3.0], [2.0, 6.0, 50.0], [-1.0, 3.0, 50.0]])
MB_MASK = torch.tensor([[True, False, False], [True, True, True], [True, True, False], [True, True, False]])


@pytest.mark.parametrize("mode, expected", [
    ("token_mean", 2.5),  # 20 / 8
    ("seq_mean_token_mean", 2.75),  # (4/1 + 6/3 + 8/2 + 2/2) / 4 = (4 + 2 + 4 + 1) / 4 = 11 / 4
    ("constant", 20 / 12),  # 20 / (4 sequences * C = 3)
])
@pytest.mark.parametrize("cut", [1, 2, 3])
def test_aggregate_micro_batches_sum_to_the_full_batch(mode, expected, cut):
    # e.g. cut = 2, token_mean: (4 + 6) / 8 + (8 + 2) / 8 = 1.25 + 1.25 = 2.5
    #               seq_mean:   (4 + 2) / 4 + (4 + 1) / 4 = 1.5 + 1.25 = 2.75
    kw = dict(step_tokens=8, step_sequences=4, constant=3.0)
    full = aggregate(MB_VALUES, MB_MASK, mode, **kw)
    parts = (aggregate(MB_VALUES[:cut], MB_MASK[:cut], mode, **kw)
             + aggregate(MB_VALUES[cut:], MB_MASK[cut:], mode, **kw))
    assert full.item() == pytest.approx(expected, rel=1e-6)
    assert parts.item() == pytest.approx(expected, rel=1e-6)


def test_aggregate_unknown_mode_raises():
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate(MB_VALUES, MB_MASK, "sum", step_tokens=8, step_sequences=4)


# ---------------------------------------------------------------- kl_estimate
# logp = [ln 0.5, ln 0.25, ln 0.5], ref = [ln 0.25, ln 0.5, ln 0.5]


def test_kl_estimate_k1_is_the_log_ratio_and_can_be_negative():
    # k1 = logp - ref = [ln 0.5 - ln 0.25, ln 0.25 - ln 0.5, 0] = [ln 2, -ln 2, 0] = [0.6931472, -0.6931472, 0]
    out = kl_estimate(_t([LN(0.5), LN(0.25), LN(0.5)]), _t([LN(0.25), LN(0.5), LN(0.5)]), "k1")
    torch.testing.assert_close(out, _t([0.6931472, -0.6931472, 0.0]))


def test_kl_estimate_k3_by_hand():
    # d = ref - logp = [-ln 2, ln 2, 0]; k3 = exp(d) - d - 1
    #   t0: 0.5 + ln 2 - 1 = ln 2 - 0.5 = 0.1931472
    #   t1: 2 - ln 2 - 1 = 1 - ln 2 = 0.3068528
    #   t2: 1 - 0 - 1 = 0
    out = kl_estimate(_t([LN(0.5), LN(0.25), LN(0.5)]), _t([LN(0.25), LN(0.5), LN(0.5)]), "k3")
    torch.testing.assert_close(out, _t([0.1931472, 0.3068528, 0.0]))


def test_kl_estimate_k3_is_never_negative():
    # exp(d) >= 1 + d for every real d, so k3 >= 0 (= 0 only at d = 0)
    d = torch.linspace(-8.0, 8.0, 161)  # includes 0
    out = kl_estimate(torch.zeros_like(d), d, "k3")
    assert (out >= 0).all()
    assert out[80].item() == 0.0  # d = 0


@pytest.mark.parametrize("estimator", ["k2", "low_var_kl", ""])
def test_kl_estimate_unknown_estimator_raises(estimator):
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(_t([0.0]), _t([0.0]), estimator)


# ---------------------------------------------------------------- token_entropy


def test_token_entropy_two_way_and_uniform():
    logits = torch.tensor([
        [[0.0, 0.0, -1e4, -1e4, -1e4], [7.0, 7.0, 7.0, 7.0, 7.0]],  # [~uniform over 2 ; uniform over V = 5]
        [[0.0, LN(3), -1e4, -1e4, -1e4], [0.0, 0.0, 0.0, 0.0, 0.0]],  # [p = (1/4, 3/4) ; uniform over 5]
    ])  # [B=2, T=2, V=5]; -1e4 gives exp underflow to exactly 0 probability
    out = token_entropy(logits)
    # uniform over 2: ln 2 = 0.6931472 ; uniform over 5: ln 5 = 1.6094379
    # (1/4, 3/4): -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.25 * 1.3862944 + 0.75 * 0.2876821
    #           = 0.3465736 + 0.2157616 = 0.5623351
    torch.testing.assert_close(out, torch.tensor([[0.6931472, 1.6094379], [0.5623351, 1.6094379]]))


def test_token_entropy_of_bfloat16_logits_is_float32():
    # logits [0, 0] exact in bf16 -> ln 2 computed in float32
    out = token_entropy(torch.zeros(1, 1, 2, dtype=torch.bfloat16))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[0.6931472]]), rtol=0, atol=1e-7)


# ---------------------------------------------------------------- value_loss
# V = [1, 2, 0.5], V_old = [0.5, 2, 1], R = [2, 1, 1]


def test_value_loss_unclipped():
    # 0.5 (V - R)^2 = 0.5 * [(1 - 2)^2, (2 - 1)^2, (0.5 - 1)^2] = 0.5 * [1, 1, 0.25] = [0.5, 0.5, 0.125]
    out = value_loss(_t([1.0, 2.0, 0.5]), _t([0.5, 2.0, 1.0]), _t([2.0, 1.0, 1.0]), clip=0.0)
    torch.testing.assert_close(out, _t([0.5, 0.5, 0.125]))


def test_value_loss_clipped_takes_the_larger_error():
    # clip = 0.2: V_clip = V_old + clamp(V - V_old, -0.2, 0.2)
    #   t0: 0.5 + clamp(0.5) = 0.7 -> (0.7 - 2)^2 = 1.69 ; unclipped 1    -> max 1.69 -> 0.845
    #   t1: 2 + clamp(0) = 2       -> (2 - 1)^2 = 1     ; unclipped 1    -> max 1    -> 0.5
    #   t2: 1 + clamp(-0.5) = 0.8  -> (0.8 - 1)^2 = 0.04 ; unclipped 0.25 -> max 0.25 -> 0.125
    values = _t([1.0, 2.0, 0.5], requires_grad=True)
    out = value_loss(values, _t([0.5, 2.0, 1.0]), _t([2.0, 1.0, 1.0]), clip=0.2)
    torch.testing.assert_close(out, _t([0.845, 0.5, 0.125]))
    # gradient: t0 takes the clipped branch with V - V_old outside the clip -> 0
    #           t1: d 0.5 (V - R)^2 / dV = V - R = 1 ; t2: V - R = -0.5
    out.sum().backward()
    torch.testing.assert_close(values.grad, _t([0.0, 1.0, -0.5]))
