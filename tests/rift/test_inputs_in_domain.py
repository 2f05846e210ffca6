"""Whether inputs lie inside an attack's domain (``rift/inputs_in_domain.py``): the rule and
words the library applies to loaded inputs and job creation to an upload's recorded range."""

from __future__ import annotations

import pytest
import torch

from rift.attacks import PGD
from rift.errors import ConfigError
from rift.inputs_in_domain import (
    OutsideDomain,
    channels_outside_domain,
    check_inputs_in_domain,
    outside_domain_message,
)


def test_one_bound_applies_to_every_channel_and_one_per_channel_to_its_own() -> None:
    low, high = [0.0, -2.0, 0.2], [1.0, 0.5, 0.3]
    assert channels_outside_domain(((0.0,), (1.0,)), low, high) == [
        OutsideDomain(1, -2.0, 0.5, 0.0, 1.0)]
    assert channels_outside_domain(((0.0, -2.0, 0.25), (1.0, 1.0, 0.3)), low, high) == [
        OutsideDomain(2, pytest.approx(0.2), pytest.approx(0.3), 0.25, pytest.approx(0.3))]
    # Another count of bounds is the count check's to refuse, not this one's.
    assert channels_outside_domain(((0.0, 0.0), (1.0, 1.0)), low, high) == []


def test_values_and_bounds_are_compared_in_float32() -> None:
    # A float32 0.1 (0.10000000149 as a float) fits an upper bound written as 0.1, as the
    # attack's clamp in float32 keeps it; a value one float32 step past it does not.
    stored = float(torch.tensor(0.1).item())
    assert stored > 0.1
    assert channels_outside_domain(((0.0,), (0.1,)), [0.0], [stored]) == []
    past = float(torch.nextafter(torch.tensor(0.1), torch.tensor(1.0)).item())
    assert [part.channel for part in channels_outside_domain(((0.0,), (0.1,)), [0.0], [past])
            ] == [0]


def test_a_range_of_every_channel_together_is_refused_only_where_it_must_be() -> None:
    # Only the overall range known: with bounds per channel, a value below every lower bound is
    # outside whichever channel holds it; one inside the loosest bounds could be anywhere.
    bounds = ((0.0, -1.0), (1.0, 5.0))
    assert channels_outside_domain(bounds, [-0.5], [4.0], together=True) == []
    assert channels_outside_domain(bounds, [-3.0], [4.0], together=True) == [
        OutsideDomain(None, -3.0, 4.0, -1.0, 5.0)]
    message = outside_domain_message("inputs", channels_outside_domain(
        ((0.0,), (1.0,)), [-3.0], [4.0], together=True))
    assert "(every channel/feature together: [-3, 4] vs [0, 1])" in message


def test_the_message_names_the_first_channels_and_the_fix() -> None:
    outside = channels_outside_domain(((0.0,), (1.0,)), [-1.0] * 6, [0.5] * 6)
    assert outside_domain_message("train inputs", outside) == (
        "the train inputs lie outside attack.domain (channel/feature 0: [-1, 0.5] vs [0, 1], "
        "channel/feature 1: [-1, 0.5] vs [0, 1], channel/feature 2: [-1, 0.5] vs [0, 1], "
        "channel/feature 3: [-1, 0.5] vs [0, 1], …); every attack step clamps into the domain, "
        "which would move clean inputs by more than eps. Widen the bounds or use 'none'")
    with pytest.raises(ConfigError) as error:
        check_inputs_in_domain(((0.0,), (1.0,)), [-1.0] * 6, [0.5] * 6, "train inputs")
    assert (error.value.field, error.value.message) == (
        "attack.domain", outside_domain_message("train inputs", outside))


def test_the_library_refuses_loaded_inputs_in_these_words() -> None:
    features = torch.tensor([[0.1, -3.0], [0.3, 2.5]]).view(2, 2, 1, 1)
    with pytest.raises(ConfigError) as error:
        PGD(0.1, 0.05, 2, bounds=((0.0,), (1.0,))).check_inputs(features, "train inputs")
    assert error.value.message == outside_domain_message(
        "train inputs", channels_outside_domain(((0.0,), (1.0,)), [0.1, -3.0], [0.3, 2.5]))
    assert "channel/feature 1: [-3, 2.5] vs [0, 1]" in error.value.message
