from launcher.metrics import pass_rate_histogram


def test_pass_rate_histogram_bins_by_quarter_with_exact_zero_and_one():
    groups = [[0, 0],            # 0
              [1, 0, 0, 0],      # 0.25 -> upper edge of the first quarter
              [1, 0, 0],         # 0.333
              [1, 0],            # 0.5
              [1, 1, 1, 0],      # 0.75
              [1, 1, 1, 1, 1, 0],  # 0.833
              [1, 1], [1.0, 1.0, 1.0]]  # 1, 1
    groups_hist, samples_hist = pass_rate_histogram(groups, pass_threshold=1.0)
    assert groups_hist == {"0": 1, "0-0.25": 1, "0.25-0.5": 2, "0.5-0.75": 1, "0.75-1": 1, "1": 2}
    assert samples_hist == {"0": 2, "0-0.25": 4, "0.25-0.5": 5, "0.5-0.75": 4, "0.75-1": 6, "1": 5}


def test_pass_rate_histogram_uses_the_threshold():
    assert pass_rate_histogram([[0.4, 0.6]], pass_threshold=0.5)[0]["0.25-0.5"] == 1
    assert pass_rate_histogram([[0.4, 0.6]], pass_threshold=0.3)[0]["1"] == 1
