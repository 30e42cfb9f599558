"""The sample/group schema: the one contract that `rollout/` and `trainer/` share.

Wire format is msgpack with numpy arrays packed as (dtype, shape, bytes), never pickle: the buffer may be
reachable over the network, and unpickling untrusted bytes executes code. A group's samples travel as columns
(encode_group): the prompt's tokens once, the per-token arrays of all samples concatenated.

Invariants:
- `decode_group` returns a valid Group or raises CorruptGroup (never another error): entries written by another
  version, truncated, or with the wrong dtypes, shapes or lengths are refused whole;
- every response token has a behaviour log-prob and the policy version that produced it
  (`len(response_ids) == len(behaviour_logprobs) == len(token_versions)`);
- a Group holds all samples drawn for one prompt in one allocation (one prompt_ids for all of them); GRPO-style
  advantages need all of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import math

import msgpack
import numpy as np

SCHEMA_VERSION = 2  # 2: samples as columns (1: one map of packed arrays per sample)


class CorruptGroup(ValueError):
    """A buffer entry that does not decode into a valid Group; the message says what is wrong with it."""


@dataclass
class Sample:
    prompt_ids: np.ndarray  # int32 [P]
    response_ids: np.ndarray  # int32 [R]
    behaviour_logprobs: np.ndarray  # float32 [R], log mu(a_t|s_t) as the engine sampled it (after temperature)
    token_versions: np.ndarray  # int32 [R], policy version that produced each response token
    reward: float
    finish_reason: str  # "stop" (EOS / stop string), "length" (hit max_new_tokens)
    # Named sub-scores and free-form info from the reward function; empty means it gave only a score.
    reward_details: dict[str, Any] = field(default_factory=dict)
    gen_seconds: float = 0.0  # wall-clock from its group's submission to the engine until the group finished

    def __post_init__(self) -> None:
        n = len(self.response_ids)
        if len(self.behaviour_logprobs) != n or len(self.token_versions) != n:
            raise ValueError(
                f"sample has {n} response tokens but {len(self.behaviour_logprobs)} log-probs and "
                f"{len(self.token_versions)} versions; every response token needs one of each"
            )


@dataclass
class Group:
    prompt_id: str
    prompt: str
    samples: list[Sample]
    worker_id: int = -1  # rollout worker that produced it; -1 means unknown
    # Dataset fields that reached the reward function (e.g. ground-truth answer); empty means none.
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def min_version(self) -> int:
        """Oldest policy version of any token in the group: staleness is measured from it."""
        versions = [int(s.token_versions.min()) for s in self.samples if len(s.token_versions)]
        return min(versions) if versions else -1

    @property
    def rewards(self) -> np.ndarray:
        return np.array([s.reward for s in self.samples], dtype=np.float32)

    @property
    def num_response_tokens(self) -> int:
        return sum(len(s.response_ids) for s in self.samples)


def _pack_array(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"d": a.dtype.str, "s": list(a.shape), "b": a.tobytes()}


def _unpack_array(d: Any, name: str) -> np.ndarray:
    want = _DTYPES[name]
    if not isinstance(d, dict) or not isinstance(d.get("d"), str) or not isinstance(d.get("b"), bytes):
        raise CorruptGroup(f"{name}: not a packed array")
    try:
        dtype = np.dtype(d["d"])
    except TypeError as e:
        raise CorruptGroup(f"{name}: dtype {d['d']!r} is not a dtype") from e
    if dtype != want:
        raise CorruptGroup(f"{name}: dtype {dtype} != {want}")
    shape = d.get("s")
    if not (isinstance(shape, list) and len(shape) == 1 and type(shape[0]) is int and shape[0] >= 0):
        raise CorruptGroup(f"{name}: shape {shape!r} is not one length")
    if len(d["b"]) != shape[0] * dtype.itemsize:
        raise CorruptGroup(f"{name}: {len(d['b'])} bytes for {shape[0]} values of {dtype}")
    return np.frombuffer(d["b"], dtype=dtype)


_DTYPES = {"prompt_ids": np.dtype("<i4"), "response_lengths": np.dtype("<i4"), "response_ids": np.dtype("<i4"),
           "behaviour_logprobs": np.dtype("<f4"), "token_versions": np.dtype("<i4")}
_TOKEN_ARRAYS = ("response_ids", "behaviour_logprobs", "token_versions")  # one value per response token
_PER_SAMPLE = {"rewards": (int, float), "finish_reasons": str, "reward_details": dict, "gen_seconds": (int, float)}


def _column(group: Group, name: str) -> np.ndarray:
    arrays = [getattr(s, name) for s in group.samples]
    if len(arrays) == 1:  # as it is: the decoder judges its dtype and shape
        return arrays[0]
    return np.concatenate(arrays) if arrays else np.zeros(0, _DTYPES[name])


def encode_group(group: Group) -> bytes:
    """One msgpack map per group, its samples as columns: the prompt's tokens once, each per-token array of all
    samples concatenated (with the response lengths to split them), one list per per-sample field. Per-sample
    arrays would cost four packed arrays a sample on each side, and store the prompt once per sample."""
    samples = group.samples
    prompt = samples[0].prompt_ids if samples else np.zeros(0, np.int32)
    if any(s.prompt_ids is not prompt and not np.array_equal(s.prompt_ids, prompt) for s in samples[1:]):
        raise ValueError(f"group {group.prompt_id!r}: its samples have different prompt_ids; a group is the samples "
                         f"of one prompt")
    return msgpack.packb(
        {"v": SCHEMA_VERSION, "prompt_id": group.prompt_id, "prompt": group.prompt, "worker_id": group.worker_id,
         "fields": group.fields, "prompt_ids": _pack_array(prompt),
         "response_lengths": _pack_array(np.array([len(s.response_ids) for s in samples], np.int32)),
         **{k: _pack_array(_column(group, k)) for k in _TOKEN_ARRAYS},
         "rewards": [float(s.reward) for s in samples], "finish_reasons": [s.finish_reason for s in samples],
         "reward_details": [s.reward_details for s in samples], "gen_seconds": [float(s.gen_seconds) for s in samples]},
        use_bin_type=True,
    )


def decode_group(data: bytes) -> Group:
    """The Group in `data`; CorruptGroup naming the first problem if it is not a valid one."""
    d, arrays = _checked(data)
    bounds = np.concatenate([[0], np.cumsum(arrays["response_lengths"])]).tolist()
    tokens = [arrays[k] for k in _TOKEN_ARRAYS]
    samples = [Sample(arrays["prompt_ids"], *(t[a:b] for t in tokens), reward=float(reward), finish_reason=finish,
                      reward_details=details, gen_seconds=float(seconds))
               for a, b, reward, finish, details, seconds in zip(bounds, bounds[1:], d["rewards"], d["finish_reasons"],
                                                                 d["reward_details"], d["gen_seconds"])]
    return Group(prompt_id=d["prompt_id"], prompt=d["prompt"], samples=samples, worker_id=d["worker_id"],
                 fields=d["fields"])


def problem_of(data: Any) -> str | None:
    """Why the entry payload `data` is not a valid group, or None if it is one (every check decode_group makes,
    without building the samples)."""
    if not isinstance(data, bytes):
        return f"payload is {type(data).__name__}, not bytes"
    try:
        _checked(data)
    except CorruptGroup as e:
        return str(e)
    return None


def _checked(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """The unpacked map of a valid group and its arrays; CorruptGroup naming the first problem otherwise."""
    try:
        d = msgpack.unpackb(data, raw=False)
    except Exception as e:  # noqa: BLE001 - msgpack raises several types for truncated or foreign bytes
        raise CorruptGroup(f"not a msgpack group ({type(e).__name__}: {e})") from e
    if not isinstance(d, dict):
        raise CorruptGroup(f"not a group but a {type(d).__name__}")
    if d.get("v") != SCHEMA_VERSION:
        raise CorruptGroup(f"group schema version {d.get('v')!r} != {SCHEMA_VERSION}: producer and consumer differ")
    _expect(d, {"prompt_id": str, "prompt": str, "worker_id": int, "fields": dict,
                **dict.fromkeys(_PER_SAMPLE, list)}, "group")
    arrays = {k: _unpack_array(d.get(k), k) for k in _DTYPES}
    lengths = arrays["response_lengths"]
    if len(lengths) == 0:
        raise CorruptGroup("group without samples")
    if (lengths < 0).any():
        raise CorruptGroup(f"response_lengths: a negative length in {lengths.tolist()[:8]}")
    total = int(lengths.sum(dtype=np.int64))
    for k in _TOKEN_ARRAYS:
        if len(arrays[k]) != total:
            raise CorruptGroup(f"{k}: {len(arrays[k])} values for responses of {total} tokens in all")
    for key, kind in _PER_SAMPLE.items():
        if len(d[key]) != len(lengths):
            raise CorruptGroup(f"group: {len(d[key])} {key} for {len(lengths)} samples")
        for i, value in enumerate(d[key]):
            if not isinstance(value, kind) or isinstance(value, bool):
                raise CorruptGroup(f"sample {i}: {key} is {type(value).__name__}, not {_name(kind)}")
    for i, reward in enumerate(d["rewards"]):
        if not math.isfinite(reward):
            raise CorruptGroup(f"sample {i}: reward {reward} is not finite")
    if not np.isfinite(arrays["behaviour_logprobs"]).all() or (arrays["token_versions"] < 0).any():
        raise CorruptGroup("a log-prob that is not finite or a negative policy version")
    return d, arrays


def _expect(d: dict, types: dict, where: str) -> None:
    for key, kind in types.items():
        value = d.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CorruptGroup(f"{where}: {key} is {type(value).__name__}, not {_name(kind)}")


def _name(kind: Any) -> str:
    return " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
