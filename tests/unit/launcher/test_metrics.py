import numpy as np

from buffer.schema import Group, Sample
from launcher.metrics import pass_rate_histogram


def _group(rewards: list[float]) -> Group:
    empty_i, empty_f = np.zeros(0, np.int32), np.zeros(0, np.float32)
    return Group("p", "1+1=", [Sample(empty_i, empty_i, empty_f, empty_i, r, "stop") for r in rewards])


def test_pass_rate_histogram_bins_by_quarter_with_exact_zero_and_one():
    groups = [_group([0, 0]),            # 0
              _group([1, 0, 0, 0]),      # 0.25 -> upper edge of the first quarter
              _group([1, 0, 0]),         # 0.333
              _group([1, 0]),            # 0.5
              _group([1, 1, 1, 0]),      # 0.75
              _group([1, 1, 1, 1, 1, 0]),  # 0.833
              _group([1, 1]), _group([1.0, 1.0, 1.0])]  # 1, 1
    groups_hist, samples_hist = pass_rate_histogram(groups, pass_threshold=1.0)
    assert groups_hist == {"0": 1, "0-0.25": 1, "0.25-0.5": 2, "0.5-0.75": 1, "0.75-1": 1, "1": 2}
    assert samples_hist == {"0": 2, "0-0.25": 4, "0.25-0.5": 5, "0.5-0.75": 4, "0.75-1": 6, "1": 5}


def test_pass_rate_histogram_uses_the_threshold():
    assert pass_rate_histogram([_group([0.4, 0.6])], pass_threshold=0.5)[0]["0.25-0.5"] == 1
    assert pass_rate_histogram([_group([0.4, 0.6])], pass_threshold=0.3)[0]["1"] == 1
