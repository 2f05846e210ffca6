"""Pooling shared by the CIFAR-style models."""

from __future__ import annotations

from torch import Tensor


def global_average_pool(features: Tensor) -> Tensor:
    """(N, C, H, W) → (N, C): the mean over the spatial positions.

    Written as a mean rather than ``adaptive_avg_pool2d(x, 1)``: the two agree, but the mean's
    backward is deterministic on CUDA (no atomic adds), so MRC gradients repeat exactly.
    """
    return features.mean(dim=(2, 3))
