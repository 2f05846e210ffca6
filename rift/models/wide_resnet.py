"""WideResNet (Zagoruyko & Komodakis 2016) with the module names of the TRADES / MART public
checkpoints: ``conv1``, ``block1``…``block3`` each holding ``layer.K`` blocks
(``bn1``/``relu1``/``conv1``/``bn2``/``relu2``/``conv2``/``convShortcut``), then ``bn1``, ``relu``
and the head ``fc``.

Some TRADES checkpoints also carry an unused ``sub_block1``; it takes no part in the forward pass,
so it is not built here (a checkpoint holding it reports those keys as unexpected).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from rift.errors import ConfigError
from rift.models.normalization import normalize_input, register_input_normalization
from rift.models.pooling import global_average_pool


class WideBasicBlock(nn.Module):
    """Pre-activation block; when the width or stride changes, the shortcut is a 1×1 convolution
    applied to the pre-activated input (as in the reference WRN)."""

    def __init__(
        self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        # Not in-place: activations may be cached and reused by the MRC engine.
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.convShortcut: nn.Conv2d | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        residual = x if self.convShortcut is None else self.convShortcut(activated)
        return residual + out


class NetworkBlock(nn.Module):
    """A group of ``depth`` blocks; only the first changes width/stride."""

    def __init__(
        self, depth: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1,
                    drop_rate,
                )
                for i in range(depth)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen. Input (N, C, H, W) in [0, 1]; output (N, num_classes) logits."""

    def __init__(
        self,
        depth: int = 34,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ConfigError(f"WideResNet depth must be 6n+4, got {depth}", "architecture.name")
        blocks_per_group = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        register_input_normalization(self, mean, std, in_channels)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(blocks_per_group, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(blocks_per_group, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(blocks_per_group, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=False)
        self.fc = nn.Linear(widths[3], num_classes)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # He initialisation (fan-out) as in the WRN paper's reference code.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(normalize_input(self, x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        out = global_average_pool(out)
        return self.fc(out)


def wide_resnet34_10(
    *,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> WideResNet:
    """WRN-34-10 (about 46.2M parameters at 10 classes)."""
    return WideResNet(34, 10, num_classes, in_channels, mean=mean, std=std)


def wide_resnet28_10(
    *,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> WideResNet:
    """WRN-28-10 (about 36.5M parameters at 10 classes)."""
    return WideResNet(28, 10, num_classes, in_channels, mean=mean, std=std)
