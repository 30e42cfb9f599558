"""The sample/group schema: the one contract that `rollout/` and `trainer/` share.

Wire format is msgpack with numpy arrays packed as (dtype, shape, bytes), never pickle: the buffer may be
reachable over the network, and unpickling untrusted bytes executes code.

Invariants:
- every response token has a behaviour log-prob and the policy version that produced it
  (`len(response_ids) == len(behaviour_logprobs) == len(token_versions)`);
- a Group holds all samples drawn for one prompt in one allocation; GRPO-style advantages need all of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

SCHEMA_VERSION = 1


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


def _unpack_array(d: dict) -> np.ndarray:
    return np.frombuffer(d["b"], dtype=np.dtype(d["d"])).reshape(d["s"])


_ARRAYS = ("prompt_ids", "response_ids", "behaviour_logprobs", "token_versions")


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
    d = msgpack.unpackb(data, raw=False)
    if d.get("v") != SCHEMA_VERSION:
        raise ValueError(f"group schema version {d.get('v')} != {SCHEMA_VERSION}: producer and consumer differ")
    samples = []
    for s in d["samples"]:
        arrays = {k: _unpack_array(s[k]) for k in _ARRAYS}
        samples.append(Sample(**arrays, reward=s["reward"], finish_reason=s["finish_reason"],
                              reward_details=s["reward_details"], gen_seconds=s["gen_seconds"]))
    return Group(prompt_id=d["prompt_id"], prompt=d["prompt"], samples=samples,
                 worker_id=d["worker_id"], fields=d["fields"])
