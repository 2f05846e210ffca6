"""Logits out of an installed architecture's structured output (rift/models/logits_output.py):
taken only where the structure says which entry they are, refused naming the structure otherwise,
and the model itself keeps its names and stays traceable."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, namedtuple

import pytest
import torch

from rift.errors import ConfigError
from rift.models.logits_output import logits_of, return_logits
from rift.segments import split_at_parameters, trace
from tests.module_factories import StructuredOutputNet

LOGITS, FEATURES = torch.ones(2, 4), torch.zeros(2, 6)
Reversed = namedtuple("Reversed", ["features", "logits"])


@dataclasses.dataclass
class Output:
    """A research model's output object (a dataclass with a ``logits`` field)."""

    hidden: torch.Tensor
    logits: torch.Tensor


class ModelOutput(OrderedDict):  # type: ignore[type-arg]
    """Hugging Face's output classes are ordered dicts whose keys are also attributes."""


@pytest.mark.parametrize("output", [
    LOGITS, {"features": FEATURES, "logits": LOGITS}, (LOGITS, FEATURES), [LOGITS, FEATURES],
    (LOGITS, torch.zeros(())), Reversed(FEATURES, LOGITS),  # the field wins over the position
    Output(FEATURES, LOGITS), ModelOutput(loss=None, logits=LOGITS, hidden_states=(FEATURES,)),
])
def test_the_logits_are_taken_where_the_structure_says_which_they_are(output: object) -> None:
    assert logits_of(output, training=False) is LOGITS


@pytest.mark.parametrize(("output", "words"), [
    ((LOGITS, torch.ones(2, 4)), "a tuple (tensor (2, 4), tensor (2, 4))"),
    ({"scores": LOGITS}, "a dict ('scores': tensor (2, 4))"),
    ((torch.ones(2, 4, 1), LOGITS), "a tuple (tensor (2, 4, 1), tensor (2, 4))"),
    ((), "a tuple (empty)"),
    ("logits", "a str (not a tensor)"),
    (Output(LOGITS, "logits"), "a Output (not a tensor)"),  # type: ignore[arg-type]
])
def test_anything_else_is_refused_naming_the_structure(output: object, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        logits_of(output, training=True)
    assert error.value.message.startswith(f"in train mode the model returns {words}, ")
    assert error.value.field == "architecture"


@pytest.mark.parametrize("form", ["dict", "namedtuple", "tuple"])
def test_the_model_returns_its_logits_keeps_its_names_and_traces(form: str) -> None:
    torch.manual_seed(0)
    plain = StructuredOutputNet(4, form)
    keys = list(plain.state_dict())
    model = return_logits(plain).eval()
    assert return_logits(model) is model and type(model).__name__ == "StructuredOutputNet"
    assert isinstance(model, StructuredOutputNet) and list(model.state_dict()) == keys
    images = torch.rand(3, 3, 8, 8)
    logits = model(images)
    assert logits.shape == (3, 4)
    segment = split_at_parameters(trace(model), [model.head.weight])
    assert segment is not None
    assert torch.allclose(segment.suffix(*segment.prefix(images)), logits)
