"""Which policy version sampled each token of a sequence that lived through weight updates (pure functions).

A sequence starts under `start` and records one switch per weight update it was in flight for: (tokens sampled
before the update, version after it). Tokens before a switch's boundary belong to the versions before it.

Where the boundary comes from (rollout/engine.py): at a `keep` update the engine is paused, and the vLLM worker
reports how many tokens each of its requests has sampled; that count is exact. A request the worker does not
hold has either not been scheduled yet (boundary 0) or finished before the pause; the engine tells them apart by
when the final output arrived (`boundary_for_unlisted`): nothing is sampled while the engine is paused, so an
output that arrived before the resume was sampled under the old weights.
"""
from __future__ import annotations

import numpy as np

ALL = 1 << 30  # a boundary past any sequence's end: every token was sampled before the update


def token_versions(length: int, start: int, switches: list[tuple[int, int]]) -> np.ndarray:
    """int32 [length]: the version of each token, given the start version and the (boundary, version) switches
    in the order they happened."""
    out = np.full(length, start, np.int32)
    for boundary, version in switches:
        out[min(max(boundary, 0), length):] = version
    return out


def boundary_for_unlisted(finished_at: float | None, resumed_at: float) -> int:
    """The boundary of a request the paused worker did not list: all of it old if its final output arrived before
    the engine resumed (`finished_at`, monotonic seconds; None while it is still running), else none of it."""
    return ALL if finished_at is not None and finished_at < resumed_at else 0
