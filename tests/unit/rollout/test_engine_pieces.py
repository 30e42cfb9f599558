"""How a seeded engine call is cut so that no request's prefill spans two scheduler steps (rollout/engine.py)."""
from rollout.engine import prefill_pieces


def test_pieces_fit_the_budget_by_hand():
    # 3 + 4 = 7 <= 8, then 5 alone (5 + 6 > 8), 6 alone, 9 alone (larger than the budget), then 1
    assert prefill_pieces([3, 4, 5, 6, 9, 1], 8) == [(0, 2), (2, 3), (3, 4), (4, 5), (5, 6)]
    assert prefill_pieces([2, 2, 2], 8) == [(0, 3)]
