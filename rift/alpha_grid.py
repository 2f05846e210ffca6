"""The α grid of the interpolation curve, without torch: the library's curve and the service's
cost estimate (``persistence/cost.py``, which counted ``floor(1 / step) + 1`` points and missed
the end point 1.0 whenever the step does not divide 1) read the same grid."""

from __future__ import annotations

import math

from rift.errors import ConfigError

# A grid finer than this is a typo, not a plan: every point costs a full robust evaluation.
MAX_GRID_POINTS = 10_001
# Grid values are rounded to this many decimals so that 3 × 0.1 reads 0.3, not 0.30000000000000004.
_GRID_DECIMALS = 10


def alpha_grid(step: float) -> list[float]:
    """α values 0, step, 2·step, … below 1, then exactly 1.0 (always last, never duplicated).

    Values are rounded to 10 decimals (0.1 · 3 is 0.3). ``step`` must lie in (0, 1]; a grid of more
    than ``MAX_GRID_POINTS`` points is refused.

    Raises:
        ConfigError: ``step`` outside (0, 1] or too small (field ``interpolation.alpha_step``).
    """
    if not (0.0 < step <= 1.0) or math.isnan(step):
        raise ConfigError(f"alpha_step must lie in (0, 1], got {step!r}",
                          field="interpolation.alpha_step")
    if 1.0 / step + 1 > MAX_GRID_POINTS:
        raise ConfigError(
            f"alpha_step {step!r} gives more than {MAX_GRID_POINTS} interpolation points; "
            "use a larger step", field="interpolation.alpha_step")
    grid: list[float] = []
    index = 0
    while True:
        value = round(index * step, _GRID_DECIMALS)
        # A value that only misses 1 by rounding noise (e.g. 20 × 0.05) is the end point itself.
        if value >= 1.0 - 10.0 ** -_GRID_DECIMALS:
            break
        grid.append(value)
        index += 1
    grid.append(1.0)
    return grid
