"""Tests of rift.robust_tally: the count a bar needs, and what a stopped count may claim."""

from __future__ import annotations

import random

import pytest

from rift.robust_tally import RobustTally, needed_count, percent


def test_needed_count_is_the_smallest_count_whose_percentage_clears_the_floor() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        total = rng.randint(1, 3000)
        # Floors on a count's exact percentage (ties with the bar), just off it, and anywhere.
        k = rng.randint(0, total)
        floor = rng.choice([percent(k, total), percent(k, total) - 1e-9,
                            percent(k, total) + 1e-9, rng.uniform(-5, 105)])
        expected = next((n for n in range(total + 1) if percent(n, total) >= floor), total + 1)
        assert needed_count(floor, total) == expected, (floor, total)


def test_a_stopped_tally_gives_a_bound_and_no_value() -> None:
    stopped = RobustTally(correct=3, attacked=6, total=10, gradient_steps=60)
    assert not stopped.complete and stopped.at_most == 7
    assert stopped.accuracy is None and stopped.accuracy_at_most == 70.0
    assert stopped.cannot_reach(8) and not stopped.cannot_reach(7)
    done = RobustTally(correct=3, attacked=10, total=10)
    assert done.accuracy == 30.0 and done.accuracy_at_most is None


def test_refuses_inconsistent_counts() -> None:
    with pytest.raises(ValueError):
        RobustTally(correct=5, attacked=4, total=10)
    with pytest.raises(ValueError):
        needed_count(50.0, 0)
