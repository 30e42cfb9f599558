"""Per-token versions of a sequence that lived through weight updates (rollout/token_versions.py), by hand."""
from __future__ import annotations

from rollout.token_versions import token_versions


def test_no_update_tags_every_token_with_the_start_version():
    assert token_versions(3, 5, []).tolist() == [5, 5, 5]


def test_each_switch_takes_over_from_its_boundary():
    # 2 tokens under v1, then v2 for 3 tokens, then v4 (an update the sequence slept through does not matter)
    assert token_versions(7, 1, [(2, 2), (5, 4)]).tolist() == [1, 1, 2, 2, 2, 4, 4]


def test_boundaries_past_either_end_are_clipped():
    assert token_versions(3, 1, [(10**9, 2)]).tolist() == [1, 1, 1]  # finished before the update
    assert token_versions(3, 1, [(0, 2)]).tolist() == [2, 2, 2]  # not scheduled before it
    assert token_versions(0, 1, [(0, 2)]).tolist() == []

