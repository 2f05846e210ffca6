"""Which distinct labels an npz's ``y`` (and ``y_test``) hold, read chunk by chunk in bounded
memory: the service records them at upload so that job creation can explain labels that skip
numbers (0, 100, 200 count 201 classes) as the library does. Imports no torch."""

from __future__ import annotations

import numpy as np

from rift.config import MAX_CLASSES

#: The most distinct labels a dataset's record lists (``datasets.distinct_labels``); past it only
#: their count is kept. A message names 8 of them; the list is for whoever reads the record.
LISTED_LABELS_MAX = 1_000


class DistinctLabels:
    """The sorted distinct values of label arrays fed with :meth:`update` (chunks of integers
    that ``rift.dataset_formats.ValueScan`` already checked: >= 0, within int64).

    Counts up to ``limit`` distinct labels (default :data:`rift.config.MAX_CLASSES`: more need
    more classes than any network has, and the upload is refused for it), so memory stays
    within ``limit`` int64 values; past it :attr:`count` is None.
    """

    def __init__(self, limit: int = MAX_CLASSES) -> None:
        self._limit = limit
        self._seen: np.ndarray = np.empty(0, dtype=np.int64)
        self._overflowed = False

    def update(self, chunk: np.ndarray) -> None:
        """Add one chunk's labels."""
        if self._overflowed or chunk.size == 0:
            return
        values = np.unique(chunk.astype(np.int64, copy=False))
        # Most chunks repeat labels already seen: look them up (binary search) before merging.
        at = np.searchsorted(self._seen, values)
        known = at < self._seen.size
        known[known] = self._seen[at[known]] == values[known]
        if known.all():
            return
        self._seen = np.union1d(self._seen, values[~known])
        if self._seen.size > self._limit:
            self._overflowed = True
            self._seen = np.empty(0, dtype=np.int64)

    @property
    def count(self) -> int | None:
        """How many distinct labels were fed; None past the limit."""
        return None if self._overflowed else int(self._seen.size)

    def listed(self, most: int = LISTED_LABELS_MAX) -> tuple[int, ...] | None:
        """The distinct labels in ascending order, when there are at most ``most``; else None."""
        if self._overflowed or self._seen.size > most:
            return None
        return tuple(int(label) for label in self._seen)
