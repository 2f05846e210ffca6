"""Which items of a list a user gave more than once, found in linear time.

Used wherever an input must name each thing once (a JSON object's keys, ``mrc.modules``,
``finetune.candidates.lrs``): the counts were taken with ``list.count`` per item, quadratic in
the list, so one request of 100,000 module names within the 1 MiB body limit held an API worker
for 13 s (and 50,000 JSON keys for 50 s) before any bound on the list was applied.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TypeVar

Item = TypeVar("Item", str, float)


def repeated(items: Iterable[Item]) -> list[Item]:
    """The items that occur more than once in ``items``, each once, in ascending order."""
    return sorted(item for item, count in Counter(items).items() if count > 1)
