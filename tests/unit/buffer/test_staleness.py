"""Staleness rules: admission capacity, staleness and the too-stale test, on hand-computed integers.

capacity = max(0, min(max_in_flight - running, (eta + version + 1) * B - (accepted + running)))
"""
from __future__ import annotations

import pytest

from buffer.staleness import admission_capacity, is_usable, staleness


def test_admission_capacity_synchronous_eta0_at_version0_admits_exactly_one_step():
    # by staleness: (0 + 0 + 1) * 4 - (0 + 0) = 4 ; by in-flight: 64 - 0 = 64 ; min = 4
    assert admission_capacity(eta=0, version=0, groups_per_step=4, accepted=0, running=0, max_in_flight=64) == 4


def test_admission_capacity_synchronous_eta0_is_full_once_one_step_is_accepted():
    # by staleness: (0 + 0 + 1) * 4 - (4 + 0) = 0 ; by in-flight: 64 ; min = 0
    assert admission_capacity(eta=0, version=0, groups_per_step=4, accepted=4, running=0, max_in_flight=64) == 0


def test_admission_capacity_synchronous_eta0_opens_exactly_one_step_per_new_version():
    # version 1, the trainer consumed the 4 accepted groups of version 0 (accepted is cumulative: 4)
    # by staleness: (0 + 1 + 1) * 4 - (4 + 0) = 8 - 4 = 4 ; by in-flight: 64 ; min = 4
    assert admission_capacity(eta=0, version=1, groups_per_step=4, accepted=4, running=0, max_in_flight=64) == 4
    # version 2 with 8 accepted: (0 + 2 + 1) * 4 - 8 = 12 - 8 = 4
    assert admission_capacity(eta=0, version=2, groups_per_step=4, accepted=8, running=0, max_in_flight=64) == 4


def test_admission_capacity_counts_running_groups_against_the_staleness_budget():
    # by staleness: (0 + 0 + 1) * 4 - (1 + 2) = 1 ; by in-flight: 64 - 2 = 62 ; min = 1
    assert admission_capacity(eta=0, version=0, groups_per_step=4, accepted=1, running=2, max_in_flight=64) == 1


def test_admission_capacity_eta2_allows_three_steps_ahead():
    # by staleness: (2 + 0 + 1) * 16 - (0 + 0) = 48 ; by in-flight: 64 - 0 = 64 ; min = 48
    assert admission_capacity(eta=2, version=0, groups_per_step=16, accepted=0, running=0, max_in_flight=64) == 48


def test_admission_capacity_eta2_mid_run_staleness_bound_binds():
    # by staleness: (2 + 3 + 1) * 16 - (40 + 8) = 96 - 48 = 48 ; by in-flight: 64 - 8 = 56 ; min = 48
    assert admission_capacity(eta=2, version=3, groups_per_step=16, accepted=40, running=8, max_in_flight=64) == 48


def test_admission_capacity_max_in_flight_bound_binds():
    # by staleness: (2 + 0 + 1) * 16 - (0 + 10) = 48 - 10 = 38 ; by in-flight: 12 - 10 = 2 ; min = 2
    assert admission_capacity(eta=2, version=0, groups_per_step=16, accepted=0, running=10, max_in_flight=12) == 2


def test_admission_capacity_negative_staleness_budget_is_clamped_to_zero():
    # by staleness: (1 + 0 + 1) * 4 - (10 + 0) = 8 - 10 = -2 ; by in-flight: 64 ; min = -2 -> max(0, -2) = 0
    assert admission_capacity(eta=1, version=0, groups_per_step=4, accepted=10, running=0, max_in_flight=64) == 0


def test_admission_capacity_running_above_max_in_flight_is_clamped_to_zero():
    # by staleness: (2 + 5 + 1) * 16 - (0 + 6) = 122 ; by in-flight: 4 - 6 = -2 ; min = -2 -> 0
    assert admission_capacity(eta=2, version=5, groups_per_step=16, accepted=0, running=6, max_in_flight=4) == 0


def test_staleness_is_current_minus_oldest_token_version():
    # 5 - 3 = 2 ; 7 - 7 = 0
    assert staleness(5, 3) == 2
    assert staleness(7, 7) == 0


@pytest.mark.parametrize(
    "current, oldest, eta, expected",
    [
        (5, 3, 2, False),  # staleness 5 - 3 = 2, 2 > 2 is False: exactly eta is still allowed
        (5, 2, 2, True),  # staleness 5 - 2 = 3, 3 > 2
        (3, 3, 0, False),  # synchronous: staleness 0, 0 > 0 is False
        (4, 3, 0, True),  # synchronous: staleness 1, 1 > 0
    ],
)
def test_too_stale_only_beyond_eta(current, oldest, eta, expected):
    assert is_usable(current, oldest, eta) is not expected


def test_usable_means_neither_staler_than_eta_nor_newer_than_the_version():
    assert is_usable(5, 3, eta=2) and is_usable(5, 5, eta=0)
    assert not is_usable(5, 2, eta=2)  # staleness 3 > 2
    assert not is_usable(0, 10, eta=2)  # made by weights newer than the trainer's: staleness -10
