"""Name → architecture. The one entry point is :func:`build_model`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from torch import nn

from rift.config import ArchitectureSpec
from rift.errors import UnknownArchitectureError
from rift.models.preact_resnet import preact_resnet18
from rift.models.resnet import resnet18, resnet34
from rift.models.small_cnn import small_cnn
from rift.models.torchvision_models import (
    PREFIX,
    build_torchvision_model,
    torchvision_classifier_names,
)
from rift.models.wide_resnet import wide_resnet28_10, wide_resnet34_10

# Each builder takes keyword arguments num_classes, in_channels, mean, std.
ModelBuilder = Callable[..., nn.Module]

_BUILDERS: Mapping[str, ModelBuilder] = MappingProxyType(
    {
        "small_cnn": small_cnn,
        "resnet18": resnet18,
        "resnet34": resnet34,
        "preact_resnet18": preact_resnet18,
        "wide_resnet34_10": wide_resnet34_10,
        "wide_resnet28_10": wide_resnet28_10,
    }
)


def list_architectures() -> list[str]:
    """Every name :func:`build_model` accepts: the built-in networks, then ``torchvision:<name>``
    for each torchvision image classifier."""
    return list(_BUILDERS) + [PREFIX + name for name in torchvision_classifier_names()]


def build_model(spec: ArchitectureSpec, *, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Build the network ``spec`` names, with freshly initialised weights, in train mode.

    ``spec.in_channels`` / ``spec.image_size``, when set, win over the keyword defaults (which the
    pipeline fills from the dataset). The model takes (N, C, H, W) float images in [0, 1] and
    returns (N, num_classes) logits; ``spec.mean``/``spec.std`` are applied inside ``forward``
    through non-persistent buffers, so state-dict keys match public checkpoints. Tensors follow the
    ambient default device, so building under ``with torch.device("meta"):`` allocates nothing.

    Raises:
        UnknownArchitectureError: the name is not known; the message lists the known names.
        ConfigError: mean/std do not fit the number of input channels.
    """
    channels = spec.in_channels if spec.in_channels is not None else in_channels
    size = spec.image_size if spec.image_size is not None else image_size
    mean: Sequence[float] | None = spec.mean
    std: Sequence[float] | None = spec.std
    if spec.name.startswith(PREFIX):
        return build_torchvision_model(
            spec.name[len(PREFIX):],
            num_classes=spec.num_classes,
            in_channels=channels,
            image_size=size,
            mean=mean,
            std=std,
        )
    builder = _BUILDERS.get(spec.name)
    if builder is None:
        raise UnknownArchitectureError(
            f"unknown architecture {spec.name!r}; known: {', '.join(_BUILDERS)}, "
            f"or '{PREFIX}<name>' for a torchvision image classifier (e.g. '{PREFIX}resnet50')",
            field="architecture.name",
        )
    return builder(num_classes=spec.num_classes, in_channels=channels, mean=mean, std=std)
