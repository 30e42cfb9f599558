"""The engine-side record of finished requests' sampled-token counts (rollout/vllm_extension.py): bounded, oldest
forgotten first, in O(1) per request (it runs inside every engine step's request removal)."""
from types import SimpleNamespace

from rollout.vllm_extension import _FinishedTracking


def test_finished_requests_are_remembered_up_to_the_cap_and_the_oldest_forgotten_first(monkeypatch):
    monkeypatch.setattr(_FinishedTracking, "CAP", 3)
    states = _FinishedTracking({f"r{i}": SimpleNamespace(output_token_ids=[0] * i) for i in range(6)})
    for i in range(6):
        states.pop(f"r{i}")
    assert list(states.finished.items()) == [("r3", 3), ("r4", 4), ("r5", 5)]
    assert not states  # the runner's own view: gone


def test_a_request_not_in_the_runner_is_not_recorded():
    states = _FinishedTracking({})
    assert states.pop("missing", None) is None
    assert not states.finished
