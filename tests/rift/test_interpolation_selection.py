"""Tests of rift.interpolation.select_alpha_lazily: the same α and the same robust accuracy of the
chosen point as the full grid, with fewer attacked examples (early stopping included)."""

from __future__ import annotations

import random

import pytest

from rift.errors import ConfigError
from rift.interpolation import alpha_grid, measure_full_curve, select_alpha_lazily
from rift.robust_tally import RobustTally, percent


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


class SimulatedAttack:
    """Per-example robust outcomes of every α in their fixed attack order, counted ``chunk`` at a
    time exactly as ``rift.sequential_attack.attack_until`` does; logs every call."""

    def __init__(self, outcomes: dict[float, list[bool]], chunk: int) -> None:
        self.outcomes, self.chunk = outcomes, chunk
        self.calls: list[tuple[float, int]] = []

    def __call__(self, alpha: float, at_least: int) -> RobustTally:
        self.calls.append((alpha, at_least))
        sequence = self.outcomes[alpha]
        correct = attacked = 0
        for start in range(0, len(sequence), self.chunk):
            if RobustTally(correct, attacked, len(sequence)).cannot_reach(at_least):
                break
            part = sequence[start:start + self.chunk]
            correct, attacked = correct + sum(part), attacked + len(part)
        return RobustTally(correct, attacked, len(sequence), attacked * 10)


def _random_outcomes(rng: random.Random, alphas: list[float], total: int
                     ) -> dict[float, list[bool]]:
    """Counts on few levels around the baseline's (ties with the bar are frequent), with the
    correct examples at random places in each α's order."""
    base = rng.randrange(total + 1)
    spread = rng.choice([0, 1, 2, max(1, total // 4)])
    outcomes: dict[float, list[bool]] = {}
    for alpha in alphas:
        count = min(total, max(0, base + rng.randint(-spread, spread)))
        sequence = [True] * count + [False] * (total - count)
        rng.shuffle(sequence)
        outcomes[alpha] = sequence
    return outcomes


def _random_clean(rng: random.Random, alphas: list[float]) -> dict[float, float]:
    levels = rng.choice([1, 2, 3, 5, 50])  # one level: every α in one equal-clean group
    if rng.random() < 0.3:  # realistic shape: clean accuracy rises with α, with plateaus
        return {a: 80.0 + round(5 * a * levels) / levels for a in alphas}
    return {a: 100.0 * rng.randrange(levels) / levels for a in alphas}


def _tolerance(rng: random.Random, total: int) -> float:
    # Whole counts make points land exactly on the bar; 0.1 is the reference code's tolerance.
    return rng.choice([0.0, 0.0, 0.1, percent(1, total), percent(rng.randrange(4), total), 10.0])


def test_same_alpha_and_robust_accuracy_as_the_full_grid_on_many_random_curves() -> None:
    rng = random.Random(1234)
    examples_full = examples_lazy = stopped_early = 0
    for trial in range(2000):
        alphas = alpha_grid(rng.choice([0.05, 0.1, 0.25, 0.5, 1.0]))
        total = rng.choice([1, 2, 7, 40, 200])
        outcomes = _random_outcomes(rng, alphas, total)
        clean = _random_clean(rng, alphas)
        robust = {a: percent(sum(o), total) for a, o in outcomes.items()}
        tolerance = _tolerance(rng, total)
        attack = SimulatedAttack(outcomes, chunk=rng.choice([1, 3, total]))

        result = select_alpha_lazily(alphas, clean.__getitem__, attack, tolerance=tolerance)

        context = (trial, clean, robust, tolerance, attack.calls)
        expected = _full_grid_choice(alphas, clean, robust, tolerance)
        assert result.chosen.alpha == expected, context
        assert result.chosen.clean_accuracy == clean[expected]
        assert result.chosen.robust_accuracy == robust[expected], context
        attacked = [alpha for alpha, _ in attack.calls]
        assert len(attacked) == len(set(attacked)) == result.robust_evaluations  # never twice
        assert attack.calls[0] == (0.0, 0)  # the bar first, in full
        for alpha, tally in result.tallies.items():
            true_count = sum(outcomes[alpha])
            if tally.complete:
                assert result.robust[alpha] == robust[alpha]
            else:  # an honest bound: the true value lies below it
                assert alpha not in result.robust
                assert tally.correct <= true_count <= tally.at_most
                stopped_early += 1
        examples_full += total * len(alphas)
        examples_lazy += result.attacked_examples
    assert stopped_early > 100  # the property was checked with early stopping, not around it
    assert examples_lazy < examples_full


def test_stops_at_the_first_qualifying_clean_level_and_cuts_failing_points_short() -> None:
    alphas = alpha_grid(0.25)  # 0, .25, .5, .75, 1
    clean = {0.0: 80.0, 0.25: 81.0, 0.5: 83.0, 0.75: 82.0, 1.0: 84.0}
    # 10 examples each: θ_AT keeps 5; α = 1 keeps 0 and fails after its first 6 examples.
    counts = {0.0: 5, 0.25: 5, 0.5: 5, 0.75: 4, 1.0: 0}
    attack = SimulatedAttack({a: [True] * c + [False] * (10 - c) for a, c in counts.items()},
                             chunk=1)
    result = select_alpha_lazily(alphas, clean.__getitem__, attack)
    assert result.chosen.alpha == 0.5 and result.chosen.robust_accuracy == 50.0
    assert attack.calls == [(0.0, 0), (1.0, 5), (0.5, 5)]  # 0.25 and 0.75 cannot change it
    assert result.tallies[1.0] == RobustTally(0, 6, 10, 60)
    assert result.attacked_examples == 10 + 6 + 10
    curve = result.curve()
    assert [p["alpha"] for p in curve] == alphas
    assert curve[1] == {"alpha": 0.25, "clean_accuracy": 81.0, "robust_accuracy": None,
                        "robust_accuracy_at_most": None}
    assert curve[4] == {"alpha": 1.0, "clean_accuracy": 84.0, "robust_accuracy": None,
                        "robust_accuracy_at_most": 40.0}
    assert curve[2]["robust_accuracy"] == 50.0 and curve[2]["robust_accuracy_at_most"] is None


def test_a_tied_clean_group_needs_exact_counts_only_from_points_that_can_win() -> None:
    alphas = [0.0, 0.25, 0.5, 1.0]
    clean = {0.0: 80.0, 0.25: 85.0, 0.5: 85.0, 1.0: 85.0}
    # The bar is 5 of 10. 0.25 qualifies with 6; 0.5 must beat 6 (ties keep the smaller α) and
    # stops once it cannot; 1.0 beats it with 7.
    sequences = {0.0: [True] * 5 + [False] * 5, 0.25: [True] * 6 + [False] * 4,
                 0.5: [False] * 4 + [True] * 6, 1.0: [True] * 7 + [False] * 3}
    attack = SimulatedAttack(sequences, chunk=1)
    result = select_alpha_lazily(alphas, clean.__getitem__, attack)
    assert result.chosen.alpha == 1.0 and result.chosen.robust_accuracy == 70.0
    assert attack.calls == [(0.0, 0), (0.25, 5), (0.5, 7), (1.0, 7)]
    assert result.tallies[0.5] == RobustTally(0, 4, 10, 40)  # at most 6 < 7 after 4 misses


def test_a_point_exactly_at_the_bar_qualifies() -> None:
    alphas = [0.0, 1.0]
    clean = {0.0: 80.0, 1.0: 90.0}
    tolerance = percent(1, 10)  # the bar drops by exactly one example
    attack = SimulatedAttack({0.0: [True] * 5 + [False] * 5, 1.0: [True] * 4 + [False] * 6},
                             chunk=1)
    result = select_alpha_lazily(alphas, clean.__getitem__, attack, tolerance=tolerance)
    assert result.chosen.alpha == 1.0 and result.chosen.robust_accuracy == 40.0
    assert attack.calls == [(0.0, 0), (1.0, 4)]


def test_the_full_curve_attacks_every_point_in_full() -> None:
    alphas = alpha_grid(0.5)
    attack = SimulatedAttack({a: [True, False, True] for a in alphas}, chunk=1)
    result = measure_full_curve(alphas, lambda a: 50.0 + a, attack)
    assert attack.calls == [(a, 0) for a in alphas]
    assert result.chosen.alpha == 1.0 and result.attacked_examples == 9
    assert all(p["robust_accuracy_at_most"] is None for p in result.curve())


def test_refuses_an_empty_grid_and_a_negative_tolerance() -> None:
    attack = SimulatedAttack({0.0: [True]}, chunk=1)
    with pytest.raises(ConfigError):
        select_alpha_lazily([], float, attack)
    with pytest.raises(ConfigError) as error:
        select_alpha_lazily([0.0], float, attack, tolerance=-1.0)
    assert error.value.field == "interpolation.robust_tolerance"


def test_a_point_that_no_count_can_win_is_not_attacked_at_all() -> None:
    # One clean group (a test set of one example, or θ_FT = θ_AT): α = 0 keeps every example,
    # so a larger α would need more than all of them. Each was called and stopped before its
    # first example, yet counted as a PGD evaluation with a robust_accuracy_at_most of 100 %.
    alphas = alpha_grid(0.25)
    attack = SimulatedAttack({a: [True] for a in alphas}, chunk=1)
    result = select_alpha_lazily(alphas, lambda a: 100.0, attack)
    assert result.chosen.alpha == 0.0 and result.chosen.robust_accuracy == 100.0
    assert attack.calls == [(0.0, 0)]
    assert result.robust_evaluations == 1 and result.attacked_examples == 1
    assert all(p["robust_accuracy"] is None and p["robust_accuracy_at_most"] is None
               for p in result.curve()[1:])
