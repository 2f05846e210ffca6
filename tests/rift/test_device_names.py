"""Device names read without torch (rift/device_names.py), as the API reads a job's device."""

from __future__ import annotations

import re

import pytest

from rift.config import DEVICE_PATTERN
from rift.device_names import DeviceName, device_labels, parse_device_name, union_labels


@pytest.mark.parametrize(("name", "parsed"), [
    ("auto", None), ("cpu", DeviceName("cpu")), ("cuda", DeviceName("cuda")),
    ("cuda:1", DeviceName("cuda", 1)), ("mps", DeviceName("mps")), ("xpu:12", DeviceName("xpu", 12)),
])
def test_every_name_of_the_config_grammar_parses(name: str, parsed: DeviceName | None) -> None:
    assert re.fullmatch(DEVICE_PATTERN, name)
    assert parse_device_name(name) == parsed
    if parsed is not None:
        assert str(parsed) == name


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:-1", "CPU", " cuda", "cuda:0:1"])
def test_other_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="unknown device"):
        parse_device_name(name)


def test_a_device_is_available_when_its_type_has_more_devices_than_its_index() -> None:
    counts = {"cpu": 1, "cuda": 2}
    assert DeviceName("cuda").available_in(counts)
    assert DeviceName("cuda", 1).available_in(counts)
    assert not DeviceName("cuda", 2).available_in(counts)
    assert not DeviceName("xpu").available_in(counts)
    assert not DeviceName("mps").available_in({"cpu": 1, "mps": 0})
    assert DeviceName("cpu").available_in(counts) and not DeviceName("cpu").is_accelerator


def test_labels_list_each_device_once_in_order() -> None:
    assert device_labels({"cuda": 2, "cpu": 1, "xpu": 0, "mps": 1}) == [
        "cpu", "cuda:0", "cuda:1", "mps"]
    assert union_labels([{"cpu": 1}, {"cpu": 1, "cuda": 11}, {"cuda": 1, "xpu": 1}]) == [
        "cpu", *(f"cuda:{i}" for i in range(11)), "xpu:0"]
