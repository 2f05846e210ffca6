"""Tests of rift.interpolation.select_alpha_lazily: the same α as the full grid, fewer attacks."""

from __future__ import annotations

import random

import pytest

from rift.errors import ConfigError
from rift.interpolation import alpha_grid, select_alpha_lazily


def _full_grid_choice(alphas: list[float], clean: dict[float, float], robust: dict[float, float],
                      tolerance: float) -> float:
    """The rule written out on the whole curve, independently of the library's code."""
    bar = robust[alphas[0]] - tolerance
    best = alphas[0]
    for alpha in alphas:
        if robust[alpha] < bar - 1e-9:
            continue
        better_clean = clean[alpha] > clean[best]
        same_clean = clean[alpha] == clean[best]
        better_robust = robust[alpha] > robust[best]
        same_robust = robust[alpha] == robust[best]
        if better_clean or (same_clean and (better_robust or (same_robust and alpha < best))):
            best = alpha
    return best


def _random_curve(rng: random.Random, alphas: list[float]) -> tuple[dict[float, float],
                                                                      dict[float, float]]:
    # Few distinct levels, so ties in clean and in robust accuracy are frequent.
    levels = rng.choice([2, 3, 5, 50])
    clean = {a: 100.0 * rng.randrange(levels) / levels for a in alphas}
    robust = {a: 100.0 * rng.randrange(levels) / levels for a in alphas}
    if rng.random() < 0.3:  # realistic shape: clean rises with α, robust falls, plus noise
        clean = {a: round(80 + 5 * a + rng.choice([0, 0.5, -0.5]), 1) for a in alphas}
        robust = {a: round(50 - 3 * a * a + rng.choice([0, 0.5, -0.5]), 1) for a in alphas}
    return clean, robust


def test_same_alpha_as_the_full_grid_on_many_random_curves_with_ties() -> None:
    rng = random.Random(1234)
    total_full = total_lazy = 0
    for trial in range(3000):
        alphas = alpha_grid(rng.choice([0.05, 0.1, 0.25, 0.5, 1.0]))
        clean, robust = _random_curve(rng, alphas)
        tolerance = rng.choice([0.0, 0.0, 0.1, 1.0, 10.0])
        attacked: list[float] = []

        def measure_robust(alpha: float, _robust: dict[float, float] = robust,
                           _log: list[float] = attacked) -> float:
            _log.append(alpha)
            return _robust[alpha]

        result = select_alpha_lazily(alphas, clean.__getitem__, measure_robust,
                                     tolerance=tolerance)
        expected = _full_grid_choice(alphas, clean, robust, tolerance)
        assert result.chosen.alpha == expected, (trial, clean, robust, tolerance)
        assert result.chosen.clean_accuracy == clean[expected]
        assert result.chosen.robust_accuracy == robust[expected]
        assert len(attacked) == len(set(attacked)) == result.robust_evaluations  # never twice
        assert attacked[0] == 0.0  # the bar first
        assert all(result.robust[a] == robust[a] for a in attacked)
        total_full += len(alphas)
        total_lazy += len(attacked)
    assert total_lazy < total_full


def test_stops_at_the_first_qualifying_clean_level() -> None:
    alphas = alpha_grid(0.25)  # 0, .25, .5, .75, 1
    clean = {0.0: 80.0, 0.25: 81.0, 0.5: 83.0, 0.75: 82.0, 1.0: 84.0}
    robust = {0.0: 50.0, 0.25: 50.5, 0.5: 50.0, 0.75: 49.0, 1.0: 40.0}
    attacked: list[float] = []
    result = select_alpha_lazily(alphas, clean.__getitem__,
                                 lambda a: attacked.append(a) or robust[a])
    assert result.chosen.alpha == 0.5
    assert attacked == [0.0, 1.0, 0.5]  # 0.25 and 0.75 cannot change the answer
    curve = result.curve()
    assert [p["alpha"] for p in curve] == alphas
    assert curve[1]["robust_accuracy"] is None and curve[2]["robust_accuracy"] == 50.0


def test_a_tied_clean_group_is_measured_whole_for_the_robust_tie_break() -> None:
    alphas = [0.0, 0.5, 1.0]
    clean = {0.0: 80.0, 0.5: 85.0, 1.0: 85.0}
    robust = {0.0: 50.0, 0.5: 50.0, 1.0: 51.0}
    result = select_alpha_lazily(alphas, clean.__getitem__, robust.__getitem__)
    assert result.chosen.alpha == 1.0 and result.robust_evaluations == 3


def test_refuses_an_empty_grid_and_a_negative_tolerance() -> None:
    with pytest.raises(ConfigError):
        select_alpha_lazily([], float, float)
    with pytest.raises(ConfigError) as error:
        select_alpha_lazily([0.0], float, float, tolerance=-1.0)
    assert error.value.field == "interpolation.robust_tolerance"
