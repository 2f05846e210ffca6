"""Interpolation between θ_AT and θ_FT, and the choice of α (docs/algorithm.md, step 3; the paper's
Algorithm 2).

    θ_α = (1 − α) θ_AT + α θ_FT        for α in [0, 1]

over every entry of the state dict, BatchNorm running statistics included. The α chosen is the one
with the best clean accuracy whose robust accuracy is not below θ_AT's (less an optional tolerance).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from rift.alpha_grid import MAX_GRID_POINTS, alpha_grid  # noqa: F401 (re-exported)
from rift.checkpoints import OPTIONAL_KEY_SUFFIX
from rift.errors import ConfigError
from rift.robust_tally import RobustTally, needed_count

# Accuracies are percentages computed as 100·k/n; two evaluations of the same weights may differ in
# the last bits only, which must not decide whether a point keeps the baseline's robustness.
_ACCURACY_SLACK = 1e-9


def interpolate_weights(
    theta_at: Mapping[str, Tensor], theta_ft: Mapping[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    """Return θ_α = (1 − α)·θ_AT + α·θ_FT for every entry of two state dicts of the same model.

    Args:
        theta_at: state dict of the adversarially trained model (the α = 0 end).
        theta_ft: state dict after fine-tuning (the α = 1 end); same keys, shapes and dtypes.
        alpha: interpolation weight in [0, 1].

    Returns:
        A new dict (fresh tensors, on θ_AT's devices) with the keys of ``theta_at`` in its order.

    Rules:
        * Floating entries (weights, biases, BatchNorm running mean/var) are interpolated.
          α = 0 returns θ_AT's values and α = 1 θ_FT's values bit for bit: the end points are
          copied rather than computed, because ``a + α(b − a)`` at α = 1 gives ``a + (b − a)``,
          which is not always ``b`` in floating point. Inside (0, 1) the arithmetic is done in at
          least fp32 and cast back, so fp16/bf16 checkpoints lose no precision on the way.
        * Integer and boolean entries (BatchNorm's ``num_batches_tracked``) are counters, not
          coordinates, and cannot be averaged: they keep θ_AT's value for every α < 1 and take
          θ_FT's at α = 1, so both end points are still reproduced exactly.

    Raises:
        ConfigError: α outside [0, 1], or the two state dicts differ in keys, shapes or dtypes.
    """
    if not (0.0 <= alpha <= 1.0) or math.isnan(alpha):
        raise ConfigError(f"alpha must lie in [0, 1], got {alpha!r}", field="interpolation.alpha")
    _check_same_layout(theta_at, theta_ft)
    result: dict[str, Tensor] = {}
    for key, start in theta_at.items():
        end = theta_ft[key].to(start.device)
        if alpha == 0.0:
            result[key] = start.detach().clone()
        elif alpha == 1.0:
            result[key] = end.detach().clone()
        elif not start.is_floating_point():
            result[key] = start.detach().clone()
        else:
            work_dtype = torch.promote_types(start.dtype, torch.float32)
            low, high = start.detach().to(work_dtype), end.detach().to(work_dtype)
            # Equal entries stay as they are: lerp of two equal infinities (an attention mask's
            # -inf in a buffer) is NaN, where (1 − α)·a + α·a is a.
            mixed = torch.where(low == high, low, torch.lerp(low, high, alpha))
            result[key] = mixed.to(start.dtype)
    return result


def theta_at_in_run_layout(theta_at: Mapping[str, Tensor], theta_ft: Mapping[str, Tensor]
                           ) -> dict[str, Tensor] | None:
    """θ_AT read from its checkpoint file again, in the layout of the run's state dicts (those of
    θ_FT), or None where only the model can tell (see below).

    The run's θ_AT is the checkpoint as the model holds it: values cast to the model's dtype (an
    fp16 or bf16 checkpoint; exact, since loading refused a cast that changes a value's kind or
    overflows) and BatchNorm counters the file lacks (``num_batches_tracked``) at the model's
    initial 0. Read from the file, it has other dtypes or fewer keys, which
    :func:`interpolate_weights` refuses: materializing an α of such a job failed. Returned as the
    run's (the file's values cast, missing counters 0). None when other keys differ: the run
    folded a parametrized weight (``rift.models.parametrized``) into a key the file lacks, and
    only the built model computes its value."""
    extra = [key for key in theta_at if key not in theta_ft]
    missing = [key for key in theta_ft if key not in theta_at]
    if extra or any(not key.endswith(OPTIONAL_KEY_SUFFIX) for key in missing):
        return None
    aligned: dict[str, Tensor] = {}
    for key, like in theta_ft.items():
        value = theta_at.get(key)
        if value is None:
            aligned[key] = torch.zeros_like(like)
        elif value.shape != like.shape:
            return None
        else:
            aligned[key] = value.to(like.dtype)
    return aligned


def _check_same_layout(theta_at: Mapping[str, Tensor], theta_ft: Mapping[str, Tensor]) -> None:
    missing = [k for k in theta_at if k not in theta_ft]
    extra = [k for k in theta_ft if k not in theta_at]
    if missing or extra:
        raise ConfigError(
            "the fine-tuned state dict does not have the keys of the adversarially trained one: "
            f"missing {_preview(missing)}, unexpected {_preview(extra)}",
            field="interpolation",
        )
    for key, start in theta_at.items():
        end = theta_ft[key]
        if start.shape != end.shape or start.dtype != end.dtype:
            raise ConfigError(
                f"state dict entry {key!r} differs: {tuple(start.shape)} {start.dtype} in θ_AT, "
                f"{tuple(end.shape)} {end.dtype} in θ_FT",
                field="interpolation",
            )


def _preview(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"[{shown}{more}]"


@dataclass(frozen=True)
class InterpolationPoint:
    """One evaluated point of the interpolation curve (seed, Figure C.5). Accuracies in percent."""

    alpha: float
    clean_accuracy: float
    robust_accuracy: float

    def as_dict(self) -> dict[str, float]:
        """A JSON-ready dict ``{alpha, clean_accuracy, robust_accuracy}``."""
        return asdict(self)


def select_alpha(
    points: Sequence[InterpolationPoint],
    *,
    baseline_robust_accuracy: float,
    tolerance: float = 0.0,
) -> InterpolationPoint:
    """Choose θ_α per Algorithm 2, line 18: best clean accuracy that keeps θ_AT's robustness.

    A point qualifies when ``robust_accuracy ≥ baseline_robust_accuracy − tolerance`` (percentage
    points). Among qualifying points the highest clean accuracy wins; ties go to the higher robust
    accuracy, then to the smaller α (the weights closer to θ_AT). If nothing qualifies — which only
    happens when α = 0 was not evaluated or the evaluation is noisy — the α = 0 point is returned
    (or the smallest α present), i.e. the original model is kept.

    Raises:
        ConfigError: ``points`` is empty or ``tolerance`` is negative.
    """
    if not points:
        raise ConfigError("no interpolation points to choose from", field="interpolation")
    if tolerance < 0:
        raise ConfigError(f"robust_tolerance must be ≥ 0, got {tolerance!r}",
                          field="interpolation.robust_tolerance")
    floor = baseline_robust_accuracy - tolerance - _ACCURACY_SLACK
    qualifying = [p for p in points if p.robust_accuracy >= floor]
    if not qualifying:
        return min(points, key=lambda p: p.alpha)
    return min(qualifying, key=lambda p: (-p.clean_accuracy, -p.robust_accuracy, p.alpha))


@dataclass(frozen=True)
class LazySelection:
    """What :func:`select_alpha_lazily` (or a full curve, :func:`measure_full_curve`) measured
    and chose. Accuracies in percent.

    ``tallies`` holds the α values that were attacked at all (α = 0 always), each with its
    robust-correct count; a count that stopped early bounds the robust accuracy from above.
    """

    chosen: InterpolationPoint
    clean: dict[float, float]
    tallies: dict[float, RobustTally]

    @property
    def robust(self) -> dict[float, float]:
        """Robust accuracy of the α values evaluated in full (never of an early-stopped one)."""
        return {alpha: value for alpha, tally in self.tallies.items()
                if (value := tally.accuracy) is not None}

    @property
    def robust_evaluations(self) -> int:
        """Points attacked at all (fully or stopped early)."""
        return len(self.tallies)

    @property
    def attacked_examples(self) -> int:
        """Examples attacked over the whole curve, the cost that early stopping cuts."""
        return sum(tally.attacked for tally in self.tallies.values())

    @property
    def gradient_steps(self) -> int:
        """PGD forward-backward passes per example, summed over every attacked example."""
        return sum(tally.gradient_steps for tally in self.tallies.values())

    def curve(self) -> list[dict[str, float | None]]:
        """One dict per α in grid order: ``robust_accuracy`` is None unless the point was
        evaluated in full; ``robust_accuracy_at_most`` is the bound of a point whose attack
        stopped once it could no longer change the choice (None otherwise)."""
        points: list[dict[str, float | None]] = []
        for alpha, clean in self.clean.items():
            tally = self.tallies.get(alpha)
            points.append({
                "alpha": alpha, "clean_accuracy": clean,
                "robust_accuracy": tally.accuracy if tally is not None else None,
                "robust_accuracy_at_most": tally.accuracy_at_most if tally is not None else None,
            })
        return points


#: ``robust_tally(alpha, at_least)``: attack θ_α's examples in a fixed order, and stop early only
#: once the count certainly stays below ``at_least`` (0: evaluate every example).
RobustTallyFn = Callable[[float, int], RobustTally]


def _check_grid(alphas: Sequence[float], tolerance: float) -> None:
    if not alphas:
        raise ConfigError("no interpolation points to choose from", field="interpolation")
    if len(set(alphas)) != len(alphas):
        raise ConfigError("the α grid has duplicate values", field="interpolation.alpha_step")
    if tolerance < 0:
        raise ConfigError(f"robust_tolerance must be ≥ 0, got {tolerance!r}",
                          field="interpolation.robust_tolerance")


def measure_full_curve(
    alphas: Sequence[float],
    clean_accuracy: Callable[[float], float],
    robust_tally: RobustTallyFn,
    *,
    tolerance: float = 0.0,
) -> LazySelection:
    """Every α attacked in full (``interpolation.curve: "full"``), then :func:`select_alpha`."""
    _check_grid(alphas, tolerance)
    clean = {alpha: clean_accuracy(alpha) for alpha in alphas}
    tallies = {alpha: robust_tally(alpha, 0) for alpha in alphas}
    points = [InterpolationPoint(alpha, clean[alpha], _exact(tallies[alpha]))
              for alpha in alphas]
    chosen = select_alpha(points, baseline_robust_accuracy=points[0].robust_accuracy,
                          tolerance=tolerance)
    return LazySelection(chosen, clean, tallies)


def _exact(tally: RobustTally) -> float:
    value = tally.accuracy
    if value is None:
        raise AssertionError(f"a full evaluation stopped early: {tally!r}")
    return value


def select_alpha_lazily(
    alphas: Sequence[float],
    clean_accuracy: Callable[[float], float],
    robust_tally: RobustTallyFn,
    *,
    tolerance: float = 0.0,
) -> LazySelection:
    """The α :func:`select_alpha` would choose on the full curve, attacking only what matters.

    ``alphas[0]`` is the baseline (α = 0 in a grid from :func:`alpha_grid`): it is attacked in
    full and its robust count sets the bar, ``needed``: the smallest count whose percentage is
    not below θ_AT's less the tolerance (the same float comparison :func:`select_alpha` makes).
    Clean accuracy is measured for every α (one forward each), then points are attacked in
    descending clean order, a whole group of equal clean accuracy at a time: the first group
    holding a point that keeps the bar contains the answer, because every point of higher clean
    accuracy was shown to miss it, and the tie-breaks (higher robust, then smaller α) only compare
    points inside that group. The baseline keeps its own bar, so the walk ends at its group at
    the latest.

    Inside a group the points are attacked in ascending α with early stopping: a point must reach
    ``needed`` to qualify and, once a smaller α of the group qualified with count ``best``, at
    least ``best + 1`` to win the tie-break (equal counts go to the smaller α). A point whose
    count can no longer reach that stops and is left with an upper bound only; a point that can
    is attacked in full, so every count that decides the answer, and the chosen point's robust
    accuracy, are exact. A point no count can win (a smaller α of its group kept every example)
    is not attacked at all. Any exact rule must attack each point of higher clean accuracy until it
    is shown to miss the bar.

    ``robust_tally`` must count the same examples in the same fixed order with the same per-example
    attack whether or not it stops early (``rift.sequential_attack.attack_until``), so a count that
    runs to the end equals the full curve's.

    Raises:
        ConfigError: ``alphas`` is empty or has duplicates, or ``tolerance`` is negative.
    """
    _check_grid(alphas, tolerance)
    clean = {alpha: clean_accuracy(alpha) for alpha in alphas}
    baseline = robust_tally(alphas[0], 0)
    tallies = {alphas[0]: baseline}
    floor = _exact(baseline) - tolerance - _ACCURACY_SLACK
    needed = needed_count(floor, baseline.total)
    by_clean: dict[float, list[float]] = {}
    for alpha in sorted(alphas, key=lambda a: (-clean[a], a)):
        by_clean.setdefault(clean[alpha], []).append(alpha)
    for group in by_clean.values():  # insertion order: descending clean accuracy, then α
        best: float | None = None
        for alpha in group:
            to_win = needed if best is None else max(needed, tallies[best].correct + 1)
            if to_win > baseline.total and alpha not in tallies:
                # No count can win: a smaller α of the group kept every example. Such a point
                # was "attacked" for no example, counted as a PGD evaluation (the bench's
                # pgd_evaluations_selection) and reported with a bound of 100 %.
                continue
            if alpha not in tallies:
                tallies[alpha] = robust_tally(alpha, to_win)
            tally = tallies[alpha]
            if not (tally.complete or tally.cannot_reach(to_win)):
                raise AssertionError(f"α = {alpha} stopped before its verdict was certain")
            # Strictly more than the best so far: equal counts keep the smaller α.
            if tally.complete and tally.correct >= to_win:
                best = alpha
        if best is not None:
            chosen = InterpolationPoint(best, clean[best], _exact(tallies[best]))
            return LazySelection(chosen, clean, tallies)
    raise AssertionError("unreachable: the baseline point always keeps its own robust accuracy")
