"""The sample/group wire schema: msgpack round trip, invariants, min_version."""
from __future__ import annotations

import re

import msgpack
import numpy as np
import pytest

from buffer.schema import SCHEMA_VERSION, Group, Sample, decode_group, encode_group


def _sample(prompt, response, logprobs, versions, reward, **kw) -> Sample:
    return Sample(
        prompt_ids=np.array(prompt, dtype=np.int32),
        response_ids=np.array(response, dtype=np.int32),
        behaviour_logprobs=np.array(logprobs, dtype=np.float32),
        token_versions=np.array(versions, dtype=np.int32),
        reward=reward,
        **kw,
    )


def _group() -> Group:
    s0 = _sample([5, 6, 7], [8, 9], [-0.5, -1.25], [3, 4], 1.0, finish_reason="stop",
                 reward_details={"format": 0.5, "note": "ok", "parts": [1, 2]}, gen_seconds=0.25)
    s1 = _sample([5, 6, 7], [10, 11, 12], [-0.125, -2.0, -0.75], [2, 2, 5], 0.0, finish_reason="length")
    return Group(prompt_id="12+7", prompt="12+7=", samples=[s0, s1], worker_id=3, fields={"answer": "19"})


def test_encode_decode_round_trip_preserves_every_field_and_dtype():
    g = _group()
    out = decode_group(encode_group(g))

    assert out.prompt_id == "12+7"
    assert out.prompt == "12+7="
    assert out.worker_id == 3
    assert out.fields == {"answer": "19"}
    assert len(out.samples) == 2
    for got, want in zip(out.samples, g.samples):
        for name, dtype in (("prompt_ids", np.int32), ("response_ids", np.int32),
                            ("behaviour_logprobs", np.float32), ("token_versions", np.int32)):
            arr = getattr(got, name)
            assert arr.dtype == dtype, name
            np.testing.assert_array_equal(arr, getattr(want, name))
        assert got.reward == want.reward
        assert got.finish_reason == want.finish_reason
        assert got.reward_details == want.reward_details
        assert got.gen_seconds == want.gen_seconds
    # exact values spelt out for the first sample (all exactly representable in float32)
    np.testing.assert_array_equal(out.samples[0].behaviour_logprobs, np.array([-0.5, -1.25], dtype=np.float32))
    np.testing.assert_array_equal(out.samples[1].token_versions, np.array([2, 2, 5], dtype=np.int32))
    assert out.samples[0].reward_details == {"format": 0.5, "note": "ok", "parts": [1, 2]}
    assert out.samples[0].gen_seconds == 0.25
    assert out.samples[1].finish_reason == "length"


def test_round_trip_of_sample_with_empty_response():
    s = _sample([1, 2], [], [], [], 0.0, finish_reason="length")
    out = decode_group(encode_group(Group(prompt_id="p", prompt="p", samples=[s]))).samples[0]
    assert out.response_ids.shape == (0,)
    assert out.response_ids.dtype == np.int32
    assert out.behaviour_logprobs.dtype == np.float32


def test_group_min_version_is_oldest_token_across_samples():
    # sample 0 versions [3, 4] -> 3 ; sample 1 versions [2, 2, 5] -> 2 ; min(3, 2) = 2
    assert _group().min_version == 2


def test_group_min_version_ignores_empty_responses_and_is_minus_one_when_all_empty():
    empty = _sample([1], [], [], [], 0.0, finish_reason="stop")
    full = _sample([1], [4, 4], [-1.0, -1.0], [7, 6], 1.0, finish_reason="stop")
    # only `full` has tokens: min(7, 6) = 6
    assert Group(prompt_id="a", prompt="a", samples=[empty, full]).min_version == 6
    assert Group(prompt_id="a", prompt="a", samples=[empty, empty]).min_version == -1


def test_group_rewards_and_num_response_tokens():
    g = _group()
    np.testing.assert_array_equal(g.rewards, np.array([1.0, 0.0], dtype=np.float32))
    assert g.rewards.dtype == np.float32
    assert g.num_response_tokens == 5  # 2 + 3


def test_sample_with_fewer_logprobs_than_response_tokens_raises():
    with pytest.raises(ValueError, match="3 response tokens but 2 log-probs"):
        _sample([1], [4, 5, 6], [-1.0, -1.0], [0, 0, 0], 0.0, finish_reason="stop")


def test_sample_with_fewer_versions_than_response_tokens_raises():
    with pytest.raises(ValueError, match="2 versions"):
        _sample([1], [4, 5, 6], [-1.0, -1.0, -1.0], [0, 0], 0.0, finish_reason="stop")


def test_decoding_bytes_of_another_schema_version_raises():
    d = msgpack.unpackb(encode_group(_group()), raw=False)
    d["v"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="schema version"):
        decode_group(msgpack.packb(d, use_bin_type=True))


def test_decoding_bytes_without_a_schema_version_raises():
    d = msgpack.unpackb(encode_group(_group()), raw=False)
    del d["v"]
    with pytest.raises(ValueError, match="schema version"):
        decode_group(msgpack.packb(d, use_bin_type=True))


def _plain_types_only(obj) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain_types_only(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_plain_types_only(v) for v in obj)
    return obj is None or isinstance(obj, (bool, int, float, str, bytes))


def test_encoded_bytes_are_plain_msgpack_of_builtin_types():
    data = encode_group(_group())
    d = msgpack.unpackb(data, raw=False)  # no ext hook, no object_hook: plain msgpack
    assert _plain_types_only(d)
    assert d["v"] == SCHEMA_VERSION
    # an array travels as (dtype string, shape, raw little-endian bytes); the samples' responses concatenated
    arr = d["response_ids"]
    assert arr["d"] == np.dtype(np.int32).str
    assert arr["s"] == [5]
    assert arr["b"] == np.array([8, 9, 10, 11, 12], dtype=np.int32).tobytes()
    assert d["response_lengths"]["b"] == np.array([2, 3], dtype=np.int32).tobytes()
    assert d["prompt_ids"]["b"] == np.array([5, 6, 7], dtype=np.int32).tobytes()  # once for the group


def test_the_prompt_travels_once_per_group_not_once_per_sample():
    prompt = np.arange(1000, dtype=np.int32)
    one = _sample([], [1], [-1.0], [0], 1.0, finish_reason="stop")
    one.prompt_ids = prompt

    def size(n):
        return len(encode_group(Group(prompt_id="p", prompt="p", samples=[one] * n)))

    assert size(16) - size(1) < 15 * 100  # 15 more samples of one token each, not 15 more prompts of 4,000 bytes


def test_a_group_whose_samples_have_different_prompts_is_refused_when_encoded():
    a = _sample([1, 2], [3], [-1.0], [0], 1.0, finish_reason="stop")
    b = _sample([1, 9], [3], [-1.0], [0], 1.0, finish_reason="stop")
    with pytest.raises(ValueError, match="different prompt_ids"):
        encode_group(Group(prompt_id="p", prompt="p", samples=[a, b]))
    same = _sample([1, 2], [4], [-1.0], [0], 0.0, finish_reason="stop")  # equal values, another array: fine
    assert len(decode_group(encode_group(Group(prompt_id="p", prompt="p", samples=[a, same]))).samples) == 2


def test_decode_accepts_a_payload_built_by_hand_with_msgpack():
    # no pickle anywhere: a consumer only needs msgpack + (dtype, shape, bytes)
    def arr(values, dtype):
        a = np.array(values, dtype=dtype)
        return {"d": a.dtype.str, "s": list(a.shape), "b": a.tobytes()}

    payload = {
        "v": SCHEMA_VERSION, "prompt_id": "1+1", "prompt": "1+1=", "worker_id": 0, "fields": {"answer": "2"},
        "prompt_ids": arr([1, 2], np.int32), "response_lengths": arr([1, 2], np.int32),
        "response_ids": arr([3, 4, 5], np.int32), "behaviour_logprobs": arr([-0.5, -1.0, -2.0], np.float32),
        "token_versions": arr([9, 8, 8], np.int32), "rewards": [1.0, 0], "finish_reasons": ["stop", "length"],
        "reward_details": [{}, {"k": 1}], "gen_seconds": [0.0, 0.5],
    }
    g = decode_group(msgpack.packb(payload, use_bin_type=True))
    assert g.fields == {"answer": "2"}
    assert g.min_version == 8
    np.testing.assert_array_equal(g.samples[0].response_ids, np.array([3], dtype=np.int32))
    np.testing.assert_array_equal(g.samples[1].behaviour_logprobs, np.array([-1.0, -2.0], dtype=np.float32))
    np.testing.assert_array_equal(g.samples[1].prompt_ids, np.array([1, 2], dtype=np.int32))
    assert [s.reward for s in g.samples] == [1.0, 0.0] and g.samples[1].reward_details == {"k": 1}


# ---------------------------------------------------------------- entries that are not valid groups


def _raw(**changes) -> dict:
    """The encoded _group() with `key__sub=value` changes (key: a top-level key; sub: a packed array's part or a
    list index)."""
    d = msgpack.unpackb(encode_group(_group()), raw=False)
    for path, value in changes.items():
        node, *keys = [d, *path.split("__")]
        for k in keys[:-1]:
            node = node[int(k) if isinstance(node, list) else k]
        last = keys[-1]
        node[int(last) if isinstance(node, list) else last] = value
    return d


def _without(key: str) -> dict:
    d = _raw()
    del d[key]
    return d


@pytest.mark.parametrize("payload, problem", [
    (b"\xc1 not msgpack", "not a msgpack group"),
    (encode_group(_group())[:-7], "not a msgpack group"),  # truncated
    (msgpack.packb([1, 2]), "not a group but a list"),
    (msgpack.packb(_raw(v=SCHEMA_VERSION + 1)), f"schema version {SCHEMA_VERSION + 1} != {SCHEMA_VERSION}"),
    (msgpack.packb(_raw(response_lengths={"d": "<i4", "s": [0], "b": b""})), "group without samples"),
    (msgpack.packb(_raw(prompt_id=7)), "group: prompt_id is int, not str"),
    (msgpack.packb(_without("rewards")), "group: rewards is NoneType, not list"),
    (msgpack.packb(_raw(prompt_ids__d="<f8")), "prompt_ids: dtype float64 != int32"),
    (msgpack.packb(_raw(response_ids__d="|O")), "dtype object != int32"),
    (msgpack.packb(_raw(response_ids__d="no such dtype")), "is not a dtype"),
    (msgpack.packb(_raw(token_versions__s=[1, 2])), "shape [1, 2] is not one length"),
    (msgpack.packb(_raw(behaviour_logprobs__b=b"\0" * 5)), "5 bytes for 5 values of float32"),
    (msgpack.packb(_raw(behaviour_logprobs__s=[1], behaviour_logprobs__b=b"\0" * 4)),
     "behaviour_logprobs: 1 values for responses of 5 tokens in all"),
    (msgpack.packb(_raw(response_lengths__b=np.array([2, -1], "<i4").tobytes())), "a negative length"),
    (msgpack.packb(_raw(finish_reasons=["stop"])), "group: 1 finish_reasons for 2 samples"),
    (msgpack.packb(_raw(rewards__0=float("nan"))), "sample 0: reward nan is not finite"),
    (msgpack.packb(_raw(rewards__1="1")), "sample 1: rewards is str, not int or float"),
    (msgpack.packb(_raw(reward_details__0=[])), "sample 0: reward_details is list, not dict"),
    (msgpack.packb(_raw(behaviour_logprobs__b=np.array([np.nan, 0, 0, 0, 0], "<f4").tobytes())),
     "not finite or a negative policy version"),
    (msgpack.packb(_raw(token_versions__b=np.array([1, 1, -1, 0, 0], "<i4").tobytes())),
     "not finite or a negative policy version"),
])
def test_an_entry_that_is_not_a_valid_group_raises_corrupt_group_naming_the_problem(payload, problem):
    from buffer.schema import CorruptGroup, problem_of

    with pytest.raises(CorruptGroup, match=re.escape(problem)):
        decode_group(payload)
    assert problem in problem_of(payload)
    assert problem_of(encode_group(_group())) is None
