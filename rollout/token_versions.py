"""Which policy version sampled each token of a sequence that lived through weight updates (pure functions).

A sequence starts under `start` and records one switch per weight update it was in flight for: (tokens sampled
before the update, version after it). Tokens before a switch's boundary belong to the versions before it.

Where the boundary comes from (rollout/engine.py): at a `keep` update the engine is paused, and the vLLM worker
reports how many tokens each request has sampled, those still running and those that finished since the last
update alike (the runner forgets a finished request only at its next step); the count is exact. A request it does
not report has not been scheduled yet: boundary 0. At an `abort` update the boundary is the length of the partial
response that is resubmitted.
"""
from __future__ import annotations

import numpy as np


def token_versions(length: int, start: int, switches: list[tuple[int, int]]) -> np.ndarray:
    """int32 [length]: the version of each token, given the start version and the (boundary, version) switches
    in the order they happened."""
    out = np.full(length, start, np.int32)
    for boundary, version in switches:
        out[min(max(boundary, 0), length):] = version
    return out

