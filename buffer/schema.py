"""The sample/group schema: the one contract that `rollout/` and `trainer/` share.

Wire format is msgpack with numpy arrays packed as (dtype, shape, bytes), never pickle: the buffer may be
reachable over the network, and unpickling untrusted bytes executes code.

Invariants:
- `decode_group` returns a valid Group or raises CorruptGroup (never another error): entries written by another
  version, truncated, or with the wrong dtypes, shapes or lengths are refused whole;
- every response token has a behaviour log-prob and the policy version that produced it
  (`len(response_ids) == len(behaviour_logprobs) == len(token_versions)`);
- a Group holds all samples drawn for one prompt in one allocation; GRPO-style advantages need all of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import math

import msgpack
import numpy as np

SCHEMA_VERSION = 1


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


def _unpack_array(d: Any, key: str, name: str) -> np.ndarray:
    want = _DTYPES[key]
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


_DTYPES = {"prompt_ids": np.dtype("<i4"), "response_ids": np.dtype("<i4"), "behaviour_logprobs": np.dtype("<f4"),
           "token_versions": np.dtype("<i4")}
_ARRAYS = tuple(_DTYPES)


def encode_group(group: Group) -> bytes:
    samples = []
    for s in group.samples:
        d = {k: _pack_array(getattr(s, k)) for k in _ARRAYS}
        d.update(reward=float(s.reward), finish_reason=s.finish_reason,
                 reward_details=s.reward_details, gen_seconds=float(s.gen_seconds))
        samples.append(d)
    return msgpack.packb(
        {"v": SCHEMA_VERSION, "prompt_id": group.prompt_id, "prompt": group.prompt,
         "worker_id": group.worker_id, "fields": group.fields, "samples": samples},
        use_bin_type=True,
    )


def decode_group(data: bytes) -> Group:
    """The Group in `data`; CorruptGroup naming the first problem if it is not a valid one."""
    try:
        d = msgpack.unpackb(data, raw=False)
    except Exception as e:  # noqa: BLE001 - msgpack raises several types for truncated or foreign bytes
        raise CorruptGroup(f"not a msgpack group ({type(e).__name__}: {e})") from e
    if not isinstance(d, dict):
        raise CorruptGroup(f"not a group but a {type(d).__name__}")
    if d.get("v") != SCHEMA_VERSION:
        raise CorruptGroup(f"group schema version {d.get('v')!r} != {SCHEMA_VERSION}: producer and consumer differ")
    _expect(d, {"prompt_id": str, "prompt": str, "worker_id": int, "fields": dict, "samples": list}, "group")
    if not d["samples"]:
        raise CorruptGroup("group without samples")
    samples = [_decode_sample(s, i) for i, s in enumerate(d["samples"])]
    return Group(prompt_id=d["prompt_id"], prompt=d["prompt"], samples=samples,
                 worker_id=d["worker_id"], fields=d["fields"])


def problem_of(data: Any) -> str | None:
    """Why the entry payload `data` is not a valid group, or None if it is one (it is decoded once to know)."""
    if not isinstance(data, bytes):
        return f"payload is {type(data).__name__}, not bytes"
    try:
        decode_group(data)
    except CorruptGroup as e:
        return str(e)
    return None


def _decode_sample(s: Any, i: int) -> Sample:
    if not isinstance(s, dict):
        raise CorruptGroup(f"sample {i}: not a map")
    _expect(s, {"reward": (int, float), "finish_reason": str, "reward_details": dict, "gen_seconds": (int, float)},
            f"sample {i}")
    arrays = {k: _unpack_array(s.get(k), k, f"sample {i} {k}") for k in _ARRAYS}
    if not math.isfinite(s["reward"]):
        raise CorruptGroup(f"sample {i}: reward {s['reward']} is not finite")
    if not np.isfinite(arrays["behaviour_logprobs"]).all() or (arrays["token_versions"] < 0).any():
        raise CorruptGroup(f"sample {i}: a log-prob that is not finite or a negative policy version")
    try:
        return Sample(**arrays, reward=float(s["reward"]), finish_reason=s["finish_reason"],
                      reward_details=s["reward_details"], gen_seconds=float(s["gen_seconds"]))
    except ValueError as e:  # the lengths of the per-token arrays differ
        raise CorruptGroup(f"sample {i}: {e}") from e


def _expect(d: dict, types: dict, where: str) -> None:
    for key, kind in types.items():
        value = d.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CorruptGroup(f"{where}: {key} is {type(value).__name__}, not {_name(kind)}")


def _name(kind: Any) -> str:
    return " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
