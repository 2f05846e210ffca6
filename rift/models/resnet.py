"""CIFAR-style ResNet-18/34 (He et al. 2016) with the module names of the widely used public
CIFAR checkpoints: ``conv1``, ``bn1``, ``layer1``…``layer4`` of ``BasicBlock``s
(``conv1``/``bn1``/``conv2``/``bn2``/``shortcut.0``/``shortcut.1``) and the head ``linear``.

The stem is a 3×3 stride-1 convolution (no max-pool), as is usual for 32×32 inputs; the head uses
global average pooling so that 64×64 (Tiny-ImageNet) or other sizes work unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from rift.models.normalization import normalize_input, register_input_normalization
from rift.models.pooling import global_average_pool


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (projection when the shape changes)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # An empty Sequential is the identity; keeping it (rather than None) matches the public
        # module tree, where `shortcut` exists in every block.
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet for small images. Input (N, C, H, W) in [0, 1]; output (N, num_classes) logits."""

    def __init__(
        self,
        num_blocks: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        register_input_normalization(self, mean, std, in_channels)
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.linear = nn.Linear(512 * BasicBlock.expansion, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, block_stride))
            self.in_planes = planes * BasicBlock.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = normalize_input(self, x)
        out = F.relu(self.bn1(self.conv1(out)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = global_average_pool(out)
        return self.linear(out)


def resnet18(
    *,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ResNet:
    """CIFAR ResNet-18 (11,173,962 parameters at 10 classes and 3 input channels)."""
    return ResNet([2, 2, 2, 2], num_classes, in_channels, mean, std)


def resnet34(
    *,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ResNet:
    """CIFAR ResNet-34 (about 21.3M parameters at 10 classes)."""
    return ResNet([3, 4, 6, 3], num_classes, in_channels, mean, std)
