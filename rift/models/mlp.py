"""A multilayer perceptron for feature vectors (tabular data) or small flattened images.

Feature vectors travel through the library as (N, F, 1, 1) tensors, so that data loading, attacks
and evaluation treat them like one-pixel images with F channels; the MLP flattens its input.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

from rift.models.normalization import normalize_input, register_input_normalization

DEFAULT_HIDDEN = (64, 64)


class MLP(nn.Module):
    """Linear–ReLU layers of widths ``hidden`` and a linear head ``head``.

    Input (N, C, H, W) with C·H·W = ``input_features`` (features: (N, F, 1, 1)); output
    (N, num_classes) logits. ``mean``/``std`` hold one value per channel (per feature for feature
    vectors) and are applied before the first layer.
    """

    def __init__(self, *, input_features: int, num_classes: int, hidden: Sequence[int],
                 in_channels: int, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        super().__init__()
        register_input_normalization(self, mean, std, in_channels)
        widths = [input_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = normalize_input(self, x).flatten(1)
        for layer in self.layers:
            out = layer(out).relu()
        return self.head(out)


def mlp(*, num_classes: int, in_channels: int, input_features: int,
        hidden: Sequence[int] | None = None, mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None) -> MLP:
    return MLP(input_features=input_features, num_classes=num_classes,
               hidden=DEFAULT_HIDDEN if hidden is None else hidden, in_channels=in_channels,
               mean=mean, std=std)
