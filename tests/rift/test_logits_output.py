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


def test_logits_of_the_wrong_width_read_from_a_tuple_are_told_as_its_first_element() -> None:
    # (features, logits) was told "returns (1, 16) ... needs logits of shape (1, 4)", as if
    # forward returned one tensor; a namedtuple's or a dict's logits add no such words.
    from rift.config import ArchitectureSpec
    from rift.models.registry import check_model_accepts

    class FeaturesFirst(torch.nn.Module):
        def __init__(self, form: str) -> None:
            super().__init__()
            self.body, self.head, self.form = torch.nn.Linear(12, 16), torch.nn.Linear(16, 5), form

        def forward(self, x: torch.Tensor) -> object:
            features = self.body(x.flatten(1))
            logits = self.head(features)
            return ((features, logits) if self.form == "tuple"
                    else Reversed(features, logits) if self.form == "namedtuple" else features)

    spec = ArchitectureSpec(name="own_net", num_classes=4)
    for form, words in (("tuple", r"\(1, 16\).*its forward returns a tuple \(tensor \(1, 16\), "
                         r"tensor \(1, 5\)\), whose first element RiFT reads as the logits"),
                        ("namedtuple", r"needs logits of shape \(1, 4\) \(batch, architecture"
                         r"\.num_classes\)$"),
                        ("tensor", r"returns \(1, 16\).*num_classes\)$")):
        model = return_logits(FeaturesFirst(form))
        with pytest.raises(ConfigError, match=words):
            check_model_accepts(model, spec, (3, 2, 2), device=torch.device("cpu"))
        assert model.training  # its mode is put back
