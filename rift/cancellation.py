"""The one way a long computation of the library stops early.

Every loop of the library (PGD steps, adversarial-set batches, evaluation batches, MRC passes,
fine-tuning batches, interpolation points) calls :func:`raise_if_cancelled` with the caller's
``should_cancel`` callback. The callback answers whether to stop (the job was cancelled) and may
itself raise another error to stop with that reason instead: the service's worker raises when the
job passed its time limit (:class:`rift.errors.TimeLimitExceeded`) or when another worker took its
lease over. Callers keep the callback cheap: it is polled once per batch or attack step, so a
callback that reads a database throttles itself (the worker reads at most once a second).
"""

from __future__ import annotations

from collections.abc import Callable

from rift.errors import JobCancelled

#: Returns True when the computation must stop; may raise to stop with another error.
ShouldCancel = Callable[[], bool]


def raise_if_cancelled(should_cancel: ShouldCancel | None) -> None:
    """Raise :class:`JobCancelled` if ``should_cancel()`` returns True (no-op when it is None).

    Raises:
        JobCancelled: the callback asked to stop.
        Exception: whatever the callback raises, unchanged.
    """
    if should_cancel is not None and should_cancel():
        raise JobCancelled()
