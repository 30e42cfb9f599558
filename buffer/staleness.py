"""Staleness rules as pure functions over integers (DESIGN.md, "The staleness bound").

The Lua admission script in `buffer/redis_buffer.py` evaluates exactly `admission_capacity`; the unit tests
check both against the same hand-computed cases.
"""
from __future__ import annotations


def admission_capacity(*, eta: int, version: int, groups_per_step: int, accepted: int, running: int,
                       max_in_flight: int) -> int:
    """How many more groups generators may start now.

    capacity = min(max_in_flight - running, (eta + version + 1) * B - (accepted + running))

    `accepted` counts groups pushed and not given back (filtered or evicted groups give their slot back),
    so at most (eta + 1) steps' worth of groups exist ahead of the trainer. Never negative.
    """
    by_staleness = (eta + version + 1) * groups_per_step - (accepted + running)
    return max(0, min(max_in_flight - running, by_staleness))


def staleness(current_version: int, oldest_token_version: int) -> int:
    """Policy versions between the trainer now and the oldest token of a group."""
    return current_version - oldest_token_version


def is_usable(current_version: int, oldest_token_version: int, eta: int) -> bool:
    """A group may be trained on now: no staler than eta, and not made by weights newer than the current version
    (after a resume from a checkpoint older than the buffer's groups; their tokens would be passed off as older)."""
    return 0 <= staleness(current_version, oldest_token_version) <= eta
