"""A robust-accuracy count that may have stopped early, and the counts a bar asks for.

An attacked evaluation counts robust-correct examples one chunk at a time. It can stop as soon
as its verdict against a bar is certain: with ``correct`` of ``attacked`` examples robust-correct
and ``total − attacked`` left, the final count lies in ``[correct, correct + remaining]``. A count
that stopped early therefore gives an upper bound, never a value (``rift.interpolation``).
"""

from __future__ import annotations

from dataclasses import dataclass


def percent(count: int, total: int) -> float:
    """``100·count/total`` written exactly as every accuracy of the library is computed
    (``rift.evaluation.evaluate_accuracy``), so that counts and percentages compare alike."""
    return 100.0 * count / total


def needed_count(floor: float, total: int) -> int:
    """The smallest count ``k`` in ``0..total`` whose :func:`percent` is ``≥ floor``
    (``total + 1`` when none is). The float comparison is the one a percentage would face."""
    if total < 1:
        raise ValueError(f"total must be ≥ 1, got {total}")
    k = min(total, max(0, int(floor * total / 100.0)))
    # The guess is within a step or two of the answer; walk to it with the exact comparison.
    while k > 0 and percent(k - 1, total) >= floor:
        k -= 1
    while k <= total and percent(k, total) < floor:
        k += 1
    return k


@dataclass(frozen=True)
class RobustTally:
    """Robust-correct examples among the first ``attacked`` of ``total`` (in a fixed order).

    ``gradient_steps`` counts PGD forward-backward passes per example summed over the attacked
    examples (attacked × attack steps), the cost unit of the attack.
    """

    correct: int
    attacked: int
    total: int
    gradient_steps: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.correct <= self.attacked <= self.total:
            raise ValueError(f"inconsistent tally {self!r}")

    @property
    def complete(self) -> bool:
        """Every example was attacked: the count is the evaluation's value."""
        return self.attacked == self.total

    @property
    def at_most(self) -> int:
        """The largest count the whole evaluation could still reach."""
        return self.correct + self.total - self.attacked

    @property
    def accuracy(self) -> float | None:
        """Robust accuracy in percent, or None when the evaluation stopped early."""
        return percent(self.correct, self.total) if self.complete and self.total else None

    @property
    def accuracy_at_most(self) -> float | None:
        """Upper bound in percent when the evaluation stopped early; None when complete."""
        return None if self.complete or not self.total else percent(self.at_most, self.total)

    def cannot_reach(self, at_least: int) -> bool:
        """Whether the final count is certainly below ``at_least`` (the evaluation may stop)."""
        return self.at_most < at_least
