"""A batch size that backs off on out-of-memory instead of failing the job.

On an accelerator the largest batch that fits depends on the model, the precision and whatever
else holds device memory, so a configured batch size can fail on one card and fit on another.
:func:`with_batch_backoff` runs a batch-size-parameterised function and, on
``torch.OutOfMemoryError`` (what CUDA raises when an allocation fails), frees the cached blocks and
tries again with half the batch, down to ``min_batch_size``.

Use it only where the batch size does not change the result beyond float rounding: evaluation and
making adversarial examples (every example is attacked independently). The MRC ascent and
fine-tuning take one optimisation step per batch, so their batch size is part of the protocol and
is never changed behind the user's back: the MRC ascent instead computes a batch that does not
fit in parts and sums their gradients, the same step (``rift.mrc._LossProbe``); fine-tuning
(BatchNorm in train mode normalises by the whole batch) has no such exact way out.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

from rift.errors import DeviceMemoryError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def with_batch_backoff(run: Callable[[int], T], batch_size: int, *, min_batch_size: int = 1,
                       on_backoff: Callable[[int, int], None] | None = None) -> T:
    """``run(batch_size)``, retried with half the batch after each out-of-memory error.

    Args:
        run: does the whole job with the given batch size (it restarts from scratch on a retry).
        batch_size: the first size to try (≥ 1).
        min_batch_size: the out-of-memory error is re-raised once this size fails.
        on_backoff: called with (failed size, next size) before each retry, e.g. to warn the user.

    Raises:
        torch.OutOfMemoryError: even ``min_batch_size`` did not fit.
        ValueError: ``batch_size`` or ``min_batch_size`` < 1.
    """
    if batch_size < 1 or min_batch_size < 1:
        raise ValueError(f"batch sizes must be ≥ 1, got {batch_size} and {min_batch_size}")
    size = batch_size
    while True:
        try:
            return run(size)
        except torch.OutOfMemoryError:
            if size <= min_batch_size:
                raise
            smaller = max(min_batch_size, size // 2)
            logger.warning("out of memory at batch size %d; retrying with %d", size, smaller)
            if on_backoff is not None:
                on_backoff(size, smaller)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # give the failed attempt's cached blocks back
            size = smaller


@contextlib.contextmanager
def out_of_memory_names(stage: str, field: str, value: int) -> Iterator[None]:
    """Turn an out-of-memory error that escaped every back-off inside the block into a
    :class:`DeviceMemoryError` naming ``field`` (the batch size the stage ran with), so a job
    fails at once with a message the user can act on instead of being retried as it is."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise DeviceMemoryError(
            f"the device ran out of memory in the {stage} stage with {field} = {value}: lower "
            f"{field}, use precision \"bf16\", or run on a device with more free memory "
            f"({str(exc).splitlines()[0][:200] if str(exc) else 'out of memory'})",
            field=field) from exc
