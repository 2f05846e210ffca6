"""``rift.repeats.repeated``: the items given more than once, each once, sorted."""

from __future__ import annotations

from rift.repeats import repeated


def test_each_repeated_item_is_named_once_in_order() -> None:
    assert repeated(["b", "a", "b", "c", "a", "b"]) == ["a", "b"]
    assert repeated([0.1, 0.01, 0.1]) == [0.1]
    assert repeated(iter(["x", "y"])) == []
    assert repeated([]) == []
