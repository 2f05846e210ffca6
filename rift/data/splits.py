"""Deterministic, class-stratified subsets: held-out test, size caps and the validation split.

Every choice is drawn from its own ``torch.Generator`` seeded from the run seed and a fixed stream
number, so that e.g. changing ``max_test_examples`` does not change which images are validation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rift.data.tensors import ImageTensors
from rift.errors import DatasetError

# One random stream per decision (see module docstring); the values are arbitrary but fixed.
TEST_SPLIT_STREAM = 1
TRAIN_CAP_STREAM = 2
TEST_CAP_STREAM = 3
VALIDATION_STREAM = 4
_STREAMS = 16


def seeded_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for one (seed, stream) pair; distinct pairs give distinct seeds."""
    if not 0 <= stream < _STREAMS:
        raise ValueError(f"stream must be in [0, {_STREAMS}); got {stream}")
    return torch.Generator().manual_seed(seed * _STREAMS + stream)


def stratified_pick(labels: Tensor, count: int,
                    generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Choose ``count`` of the ``N`` examples, about ``count / N`` of every class.

    Returns ``(chosen, rest)``: sorted int64 index tensors that partition ``range(N)``.
    Method: shuffle, group by class (stable sort keeps the shuffled order inside a class), then take
    every (N / count)-th position of that list; each class gets its share up to rounding.
    """
    n = int(labels.shape[0])
    if not 0 <= count <= n:
        raise ValueError(f"count must be in [0, {n}]; got {count}")
    order = torch.randperm(n, generator=generator)
    grouped = order[torch.sort(labels.cpu()[order], stable=True).indices]
    rank = torch.arange(n)
    # Position i is chosen when floor((i + 1) * count / N) steps up: exactly `count` positions.
    chosen_mask = (rank + 1) * count // n > rank * count // n if n else rank.bool()
    chosen = grouped[chosen_mask].sort().values
    rest = grouped[~chosen_mask].sort().values
    return chosen, rest


def hold_out(data: ImageTensors, fraction: float, generator: torch.Generator,
             *, what: str) -> tuple[ImageTensors, ImageTensors]:
    """Split ``data`` into (kept, held_out) with ``round(fraction * N)`` (at least 1) held out.

    ``what`` names the split in the error raised when there are too few examples to split.
    """
    n = len(data)
    count = max(1, round(fraction * n))
    if n - count < 1:
        raise DatasetError(
            f"{n} example(s) are too few to hold out a {what} split of fraction {fraction}; "
            "use more data or a larger 'max_train_examples'")
    held, kept = stratified_pick(data.labels, count, generator)
    return data.select(kept), data.select(held)


def cap(data: ImageTensors, limit: int | None, generator: torch.Generator) -> ImageTensors:
    """At most ``limit`` examples, a class-stratified random subset (``None``: no limit)."""
    if limit is None or limit >= len(data):
        return data
    chosen, _ = stratified_pick(data.labels, limit, generator)
    return data.select(chosen)
