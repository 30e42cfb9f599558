"""build_train_batch: layout, padding, shifted response positions, rewards / group ids, and the advantages and
last-token rewards computed from them.

Two groups of unequal lengths:
  group A, prompt [11, 12, 13] (P = 3): a0 response [21, 22] reward 1 ; a1 response [23] reward 0
  group B, prompt [31, 32]     (P = 2): b0 response [41, 42, 43, 44] reward 1 ; b1 [45] reward 0 ; b2 [46, 47] reward 0
Lengths P + R: 5, 4, 6, 3, 4 -> width T + 1 = 6, shifted width T = 5.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from buffer.schema import Group, Sample
from trainer.advantages import ADVANTAGES
from trainer.config import AdvantageConfig
from trainer.batch import build_train_batch, last_token_rewards

def sequence_advantages(rewards, group_ids, *, name, **cfg):
    """The registered sequence-level estimator `name`, as the trainer calls it."""
    return ADVANTAGES.resolve(name)(rewards, group_ids, AdvantageConfig(name=name, **cfg))



def _sample(prompt, response, logprobs, reward) -> Sample:
    return Sample(prompt_ids=np.array(prompt, dtype=np.int32), response_ids=np.array(response, dtype=np.int32),
                  behaviour_logprobs=np.array(logprobs, dtype=np.float32),
                  token_versions=np.zeros(len(response), dtype=np.int32), reward=reward, finish_reason="stop")


def _groups() -> list[Group]:
    pa, pb = [11, 12, 13], [31, 32]
    a = Group(prompt_id="a", prompt="a", samples=[
        _sample(pa, [21, 22], [-0.5, -0.25], 1.0),
        _sample(pa, [23], [-1.0], 0.0),
    ])
    b = Group(prompt_id="b", prompt="b", samples=[
        _sample(pb, [41, 42, 43, 44], [-0.125, -0.375, -0.625, -0.875], 1.0),
        _sample(pb, [45], [-2.0], 0.0),
        _sample(pb, [46, 47], [-1.5, -0.75], 0.0),
    ])
    return [a, b]


def test_input_ids_are_prompt_then_response_right_padded_with_zero():
    batch = build_train_batch(_groups())
    expected = torch.tensor([
        [11, 12, 13, 21, 22, 0],
        [11, 12, 13, 23, 0, 0],
        [31, 32, 41, 42, 43, 44],
        [31, 32, 45, 0, 0, 0],
        [31, 32, 46, 47, 0, 0],
    ])
    assert batch.input_ids.dtype == torch.long
    assert torch.equal(batch.input_ids, expected)
    assert torch.equal(batch.attention_mask, torch.tensor([
        [1, 1, 1, 1, 1, 0],  # 3 + 2 = 5 real tokens
        [1, 1, 1, 1, 0, 0],  # 3 + 1 = 4
        [1, 1, 1, 1, 1, 1],  # 2 + 4 = 6
        [1, 1, 1, 0, 0, 0],  # 2 + 1 = 3
        [1, 1, 1, 1, 0, 0],  # 2 + 2 = 4
    ]))


def test_custom_pad_id_fills_the_padding():
    batch = build_train_batch(_groups(), pad_id=99)
    # row 3 (b1): [31, 32, 45] then 6 - 3 = 3 pads
    assert batch.input_ids[3].tolist() == [31, 32, 45, 99, 99, 99]
    assert batch.attention_mask[3].tolist() == [1, 1, 1, 0, 0, 0]


def test_targets_are_input_ids_shifted_left_by_one():
    batch = build_train_batch(_groups())
    assert batch.targets.shape == (5, 5)
    assert batch.targets[0].tolist() == [12, 13, 21, 22, 0]
    assert batch.targets[2].tolist() == [32, 41, 42, 43, 44]


def test_response_mask_sits_exactly_at_shifted_positions_p_minus_1_to_p_plus_r_minus_2():
    batch = build_train_batch(_groups())
    F, T = False, True
    expected = torch.tensor([
        [F, F, T, T, F],  # P = 3, R = 2 -> positions 2 .. 3
        [F, F, T, F, F],  # P = 3, R = 1 -> position 2
        [F, T, T, T, T],  # P = 2, R = 4 -> positions 1 .. 4
        [F, T, F, F, F],  # P = 2, R = 1 -> position 1
        [F, T, T, F, F],  # P = 2, R = 2 -> positions 1 .. 2
    ])
    assert batch.response_mask.dtype == torch.bool
    assert torch.equal(batch.response_mask, expected)
    # the masked targets are exactly the response tokens, in order
    assert batch.targets[batch.response_mask].tolist() == [21, 22, 23, 41, 42, 43, 44, 45, 46, 47]


def test_behaviour_logp_is_placed_at_response_positions_and_zero_elsewhere():
    batch = build_train_batch(_groups())
    expected = torch.tensor([
        [0.0, 0.0, -0.5, -0.25, 0.0],
        [0.0, 0.0, -1.0, 0.0, 0.0],
        [0.0, -0.125, -0.375, -0.625, -0.875],
        [0.0, -2.0, 0.0, 0.0, 0.0],
        [0.0, -1.5, -0.75, 0.0, 0.0],
    ])
    assert batch.behaviour_logp.dtype == torch.float32
    assert torch.equal(batch.behaviour_logp, expected)


def test_rewards_and_group_ids_follow_the_row_order():
    batch = build_train_batch(_groups())
    # rows a0, a1 (group 0), b0, b1, b2 (group 1) with rewards 1, 0, 1, 0, 0
    assert batch.rewards.dtype == torch.float32
    assert batch.rewards.tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert batch.group_ids.dtype == torch.long
    assert batch.group_ids.tolist() == [0, 0, 1, 1, 1]


def _token_advantages(batch, scale_by_std: bool) -> torch.Tensor:
    """Sequence advantages from trainer.advantages spread over each row's response positions, as the trainer does."""
    seq_adv = sequence_advantages(batch.rewards, batch.group_ids, name="grpo", scale_by_std=scale_by_std)  # [B]
    return seq_adv[:, None] * batch.response_mask  # [B, T]


def test_advantages_are_centred_within_each_group_without_std_scaling():
    batch = build_train_batch(_groups())
    # group A rewards [1, 0]: mean 0.5 -> [0.5, -0.5]
    # group B rewards [1, 0, 0]: mean 1/3 -> [2/3, -1/3, -1/3]
    # (one mean over all five rewards, 2/5, would give [0.6, -0.4, 0.6, -0.4, -0.4] instead)
    a, b = 2 / 3, -1 / 3
    expected = torch.tensor([
        [0.0, 0.0, 0.5, 0.5, 0.0],
        [0.0, 0.0, -0.5, 0.0, 0.0],
        [0.0, a, a, a, a],
        [0.0, b, 0.0, 0.0, 0.0],
        [0.0, b, b, 0.0, 0.0],
    ])
    advantages = _token_advantages(batch, scale_by_std=False)
    assert advantages.dtype == torch.float32
    torch.testing.assert_close(advantages, expected)


def test_advantages_are_group_grpo_advantages_with_std_scaling():
    batch = build_train_batch(_groups())
    # group A: centred [0.5, -0.5], population std 0.5 -> 0.5 / (0.5 + 1e-6) = 0.999998 -> [1, -1] (to 1e-5)
    # group B: centred [2/3, -1/3, -1/3], var = (4/9 + 1/9 + 1/9) / 3 = 2/9, std = sqrt(2)/3
    #          (2/3) / (sqrt(2)/3) = sqrt(2) = 1.4142136 ; (-1/3) / (sqrt(2)/3) = -1/sqrt(2) = -0.7071068
    a, b = math.sqrt(2), -1 / math.sqrt(2)
    expected = torch.tensor([
        [0.0, 0.0, 1.0, 1.0, 0.0],
        [0.0, 0.0, -1.0, 0.0, 0.0],
        [0.0, a, a, a, a],
        [0.0, b, 0.0, 0.0, 0.0],
        [0.0, b, b, 0.0, 0.0],
    ])
    torch.testing.assert_close(_token_advantages(batch, scale_by_std=True), expected, rtol=0, atol=1e-5)


def test_last_token_rewards_sit_on_each_rows_last_response_position():
    batch = build_train_batch(_groups())
    # last response position = P - 1 + R - 1 = P + R - 2: a0 3 + 2 - 2 = 3 ; a1 3 + 1 - 2 = 2 ; b0 2 + 4 - 2 = 4
    #                                                       b1 2 + 1 - 2 = 1 ; b2 2 + 2 - 2 = 2
    out = last_token_rewards(batch, torch.tensor([0.5, -1.0, 2.0, 3.0, 4.0]))
    expected = torch.tensor([
        [0.0, 0.0, 0.0, 0.5, 0.0],
        [0.0, 0.0, -1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 2.0],
        [0.0, 3.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 4.0, 0.0, 0.0],
    ])
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)
    # each row's sum is its reward: exactly one position carries it
    assert out.sum(-1).tolist() == [0.5, -1.0, 2.0, 3.0, 4.0]


def test_last_token_rewards_leave_an_empty_response_row_at_zero():
    # prompt [11, 12, 13] with response [21, 22] (last position 3) and with no response at all
    group = Group(prompt_id="e", prompt="e", samples=[
        _sample([11, 12, 13], [21, 22], [-0.5, -0.5], 1.0),
        _sample([11, 12, 13], [], [], 5.0),
    ])
    batch = build_train_batch([group])
    out = last_token_rewards(batch, batch.rewards)
    assert out.tolist() == [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]


def test_num_tokens_counts_real_tokens():
    batch = build_train_batch(_groups())
    assert batch.num_tokens == 22  # 5 + 4 + 6 + 3 + 4


def test_select_takes_the_same_rows_of_every_field():
    batch = build_train_batch(_groups())
    sub = batch.select(slice(1, 3))  # rows a1, b0
    assert sub.input_ids.tolist() == [[11, 12, 13, 23, 0, 0], [31, 32, 41, 42, 43, 44]]
    assert sub.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert sub.targets.tolist() == [[12, 13, 23, 0, 0], [32, 41, 42, 43, 44]]
    assert sub.response_mask.tolist() == [[False, False, True, False, False], [False, True, True, True, True]]
    assert sub.behaviour_logp.tolist() == [[0.0, 0.0, -1.0, 0.0, 0.0], [0.0, -0.125, -0.375, -0.625, -0.875]]
    assert sub.rewards.tolist() == [0.0, 1.0]
    assert sub.group_ids.tolist() == [0, 1]
    assert sub.num_tokens == 10  # 4 + 6


def test_to_moves_every_field():
    # "meta" stands in for a GPU here: a tensor left behind on the CPU would show as device "cpu"
    batch = build_train_batch(_groups()).to("meta")
    for name in ("input_ids", "attention_mask", "targets", "response_mask", "behaviour_logp", "rewards", "group_ids"):
        assert getattr(batch, name).device.type == "meta", name
    assert batch.input_ids.shape == (5, 6) and batch.response_mask.shape == (5, 5)
