"""The rate budget turns a rate into whole events per tick, from a trickle to capped bursts."""

from __future__ import annotations

import pytest

from streaming.simulator.pacing import MAX_BATCH_EVENTS, RateBudget


def test_a_rate_of_one_yields_one_event_per_second():
    budget = RateBudget(1, now=0.0)
    assert [budget.take(now) for now in (0.5, 0.99, 1.0, 1.5, 2.0)] == [0, 0, 1, 0, 1]


def test_rate_zero_never_makes_anything_due():
    budget = RateBudget(0, now=0.0)
    assert budget.take(3600.0) == 0


def test_high_rates_come_in_capped_batches_and_debt_is_bounded():
    budget = RateBudget(1_000_000, now=0.0)
    assert budget.take(0.01) == 10_000
    assert budget.take(60.0) == MAX_BATCH_EVENTS
    assert budget.behind
    owed = 0
    while budget.behind:
        owed += budget.take(60.0)
    assert owed == 100_000 - MAX_BATCH_EVENTS


def test_restart_forgets_the_time_since_the_last_take():
    budget = RateBudget(100, now=0.0)
    budget.restart(50.0)
    assert budget.take(50.1) == 10


def test_negative_rates_are_rejected():
    with pytest.raises(ValueError):
        RateBudget(-1, now=0.0)
