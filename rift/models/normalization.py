"""Input normalisation inside the network, so callers always feed images in [0, 1].

The statistics live in non-persistent buffers: they move with ``model.to(device)`` but never appear
in ``state_dict()``, so the state-dict keys stay identical to those of public checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rift.errors import ConfigError

MEAN_BUFFER = "input_mean"
STD_BUFFER = "input_std"


def _per_channel(values: Sequence[float], in_channels: int, field: str) -> list[float]:
    # One value is broadcast to every channel; otherwise there must be one per channel.
    if len(values) == 1:
        return [float(values[0])] * in_channels
    if len(values) != in_channels:
        raise ConfigError(
            f"'{field}' has {len(values)} entries but the model has {in_channels} input channels; "
            f"give 1 or {in_channels} values",
            field=f"architecture.{field}",
        )
    return [float(v) for v in values]


def register_input_normalization(
    module: nn.Module,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    in_channels: int,
) -> None:
    """Attach ``input_mean``/``input_std`` buffers of shape (1, C, 1, 1) to ``module``.

    ``mean``/``std`` are per-channel statistics of [0, 1] images. Both ``None`` means identity
    (the buffers are registered as ``None``, which ``normalize_input`` skips).
    """
    if (mean is None) != (std is None):
        raise ConfigError("give both 'mean' and 'std', or neither", field="architecture.mean")
    if mean is None or std is None:
        module.register_buffer(MEAN_BUFFER, None, persistent=False)
        module.register_buffer(STD_BUFFER, None, persistent=False)
        return
    mean_values = _per_channel(mean, in_channels, "mean")
    std_values = _per_channel(std, in_channels, "std")
    if any(s <= 0 for s in std_values):
        raise ConfigError("every 'std' entry must be > 0", field="architecture.std")
    # torch.tensor follows the ambient default device, so meta-device builds stay on meta.
    module.register_buffer(
        MEAN_BUFFER, torch.tensor(mean_values).view(1, in_channels, 1, 1), persistent=False
    )
    module.register_buffer(
        STD_BUFFER, torch.tensor(std_values).view(1, in_channels, 1, 1), persistent=False
    )


def normalize_input(module: nn.Module, images: Tensor) -> Tensor:
    """Return ``(images - mean) / std`` using ``module``'s buffers; identity when they are unset.

    ``images``: (N, C, H, W) float in [0, 1].
    """
    mean = getattr(module, MEAN_BUFFER, None)
    std = getattr(module, STD_BUFFER, None)
    if mean is None or std is None:
        return images
    return (images - mean) / std


def applied_normalization(model: nn.Module) -> tuple[list[float], list[float]] | None:
    """The per-channel mean and std ``model`` subtracts and divides by at its input (the
    buffers of :func:`register_input_normalization`, as the built-in and torchvision builders
    register them; ``[0.0]`` and ``[1.0]`` where registered unset), or None where it has none of
    these buffers (an installed builder that normalises, or not, its own way). A torchvision
    model applies ImageNet's statistics when ``architecture.mean/std`` are unset, so the
    configuration alone does not say."""
    buffers = model._buffers
    if MEAN_BUFFER not in buffers or STD_BUFFER not in buffers:
        return None
    mean, std = buffers[MEAN_BUFFER], buffers[STD_BUFFER]
    if mean is None or std is None:
        return [0.0], [1.0]
    if mean.is_meta or std.is_meta:
        return None
    return ([float(v) for v in mean.detach().double().flatten().tolist()],
            [float(v) for v in std.detach().double().flatten().tolist()])
