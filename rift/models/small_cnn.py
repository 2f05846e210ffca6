"""A tiny convolutional classifier for tests and demos (about 25k parameters).

It works on anything from 8×8 single-channel digits to 32×32 (or larger) RGB images, because the
spatial size is removed by global average pooling before the linear head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from rift.models.normalization import normalize_input, register_input_normalization
from rift.models.pooling import global_average_pool


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages (16, 32, 64 channels; the last two with stride 2) and ``fc``.

    Input (N, C, H, W) in [0, 1]; output (N, num_classes) logits.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        register_input_normalization(self, mean, std, in_channels)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = normalize_input(self, x)
        out = F.relu(self.bn1(self.conv1(out)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.relu(self.bn3(self.conv3(out)))
        out = global_average_pool(out)
        return self.fc(out)


def small_cnn(
    *,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> SmallCNN:
    """Build a :class:`SmallCNN`."""
    return SmallCNN(num_classes, in_channels, mean, std)
