"""Per-call sample plans: uniform, and GVM with pilots, smoothing and bounds, against hand-computed values."""
from __future__ import annotations

import pytest

from buffer.prompt_stats import PromptStat
from rollout.config import GvmConfig
from rollout.sampling_plan import plan_samples

GVM = GvmConfig(alpha=0.0, n_min=2, n_max=32, pilot_size=4, prior_a=1.0, prior_b=1.0)
NEW = PromptStat()


def test_uniform_gives_every_prompt_the_group_size():
    plan = plan_samples([NEW, PromptStat(8, 2, 8)], group_size=8, allocation="uniform", gvm=GVM)
    assert plan.counts == [8, 8]


def test_gvm_with_only_new_prompts_splits_the_budget_evenly():
    assert plan_samples([NEW] * 3, group_size=4, allocation="gvm", gvm=GVM).counts == [4, 4, 4]


def test_gvm_gives_pilots_then_favours_the_harder_known_prompt():
    # budget 3 x 4 = 12; the new prompt gets the pilot 4; 8 left for the known two
    # smoothed p: (0 + 1) / (8 + 2) = 0.1 and (8 + 1) / (8 + 2) = 0.9; G unknown -> neutral 1
    # w = 1/sqrt(0.1) : 1/sqrt(0.9) = 3 : 1 -> 6 and 2
    plan = plan_samples([NEW, PromptStat(8, 0, 8), PromptStat(8, 8, 8)], group_size=4, allocation="gvm",
                        gvm=GVM)
    assert plan.counts == [4, 6, 2]
    assert plan.pilots == 1


def test_gvm_uses_gradient_norms():
    # equal pass rates 0.5 (4 of 6 with prior -> (4+1)/(6+2)... use a = 6, p = 3: (3+1)/(6+2) = 0.5 for both)
    # G = 3 and 1 -> w = 3 : 1 -> budget 8 -> 6 and 2
    plan = plan_samples([PromptStat(6, 3, 6, 3.0, 7), PromptStat(6, 3, 6, 1.0, 9)], group_size=4,
                        allocation="gvm", gvm=GVM)
    assert plan.counts == [6, 2]


def test_gvm_keeps_the_budget_and_the_bounds():
    stats = [PromptStat(8, i, 8, float(i + 1), 0) for i in range(8)] + [NEW] * 2
    plan = plan_samples(stats, group_size=8, allocation="gvm", gvm=GvmConfig(n_min=2, n_max=12))
    assert sum(plan.counts) == 80
    assert all(2 <= c <= 12 for c in plan.counts)


def test_unknown_allocation_raises():
    with pytest.raises(ValueError, match="uniform, gvm"):
        plan_samples([NEW], group_size=4, allocation="greedy", gvm=GVM)
