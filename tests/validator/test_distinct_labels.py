"""The distinct labels an upload records (``validator/distinct_labels.py``): exact over any
chunking, listed up to a bound, counted up to another."""

from __future__ import annotations

import numpy as np

from validator.distinct_labels import DistinctLabels


def test_labels_fed_in_chunks_are_counted_and_listed_once_each() -> None:
    labels = np.array([200, 0, 100, 0, 200, 100, 7], dtype=np.uint16)
    found = DistinctLabels()
    for chunk in np.array_split(labels, 4):  # 200 and 0 again in later chunks
        found.update(chunk)
    found.update(labels[:0])  # an empty chunk changes nothing
    assert (found.count, found.listed()) == (4, (0, 7, 100, 200))


def test_past_the_listed_bound_only_the_count_is_kept() -> None:
    found = DistinctLabels()
    found.update(np.arange(0, 3000, 2).reshape(-1, 1))  # (N, 1) labels, 1,500 distinct
    assert (found.count, found.listed()) == (1500, None)
    assert found.listed(most=1500) == tuple(range(0, 3000, 2))


def test_past_the_counted_bound_nothing_is_kept() -> None:
    # A label needing more classes than any network has: the upload is refused for its class
    # count, and memory stays bounded meanwhile (one flag per label below the limit).
    found = DistinctLabels(limit=10)
    found.update(np.arange(8))
    assert found.count == 8
    found.update(np.arange(5, 15))
    assert (found.count, found.listed()) == (None, None)
    found.update(np.arange(3))
    assert found.count is None
