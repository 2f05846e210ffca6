"""Name → architecture. The one entry point is :func:`build_model`.

Operators add architectures by installing a package that declares an entry point in the group
``rift.architectures``: ``name = package.module:builder``, where ``builder`` takes the keyword
arguments ``num_classes``, ``in_channels``, ``mean``, ``std`` like the built-in builders and
returns an ``nn.Module`` mapping (N, C, H, W) inputs to (N, num_classes) logits. The library, the
CLI and the workers all resolve names here, so an installed architecture is usable everywhere;
uploads never carry code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from types import MappingProxyType

from torch import nn

from rift.config import ArchitectureSpec
from rift.errors import ConfigError, UnknownArchitectureError
from rift.models.mlp import mlp
from rift.models.preact_resnet import preact_resnet18
from rift.models.resnet import resnet18, resnet34
from rift.models.small_cnn import small_cnn
from rift.models.torchvision_models import (
    PREFIX,
    build_torchvision_model,
    torchvision_classifier_names,
)
from rift.models.wide_resnet import wide_resnet28_10, wide_resnet34_10

logger = logging.getLogger(__name__)

# Each builder takes keyword arguments num_classes, in_channels, mean, std.
ModelBuilder = Callable[..., nn.Module]
ENTRY_POINT_GROUP = "rift.architectures"
MLP = "mlp"

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


def installed_architectures() -> dict[str, str]:
    """Entry points of the group ``rift.architectures``: name → ``module:attribute`` (not yet
    imported). Names of built-in architectures are not overridden."""
    found = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in _BUILDERS or point.name == MLP or point.name.startswith(PREFIX):
            logger.warning("ignoring installed architecture %r: a built-in has that name",
                           point.name)
            continue
        found[point.name] = point.value
    return found


def _installed_builder(name: str) -> ModelBuilder | None:
    for point in entry_points(group=ENTRY_POINT_GROUP, name=name):
        builder = point.load()
        if not callable(builder):
            raise UnknownArchitectureError(
                f"installed architecture {name!r} ({point.value}) is not callable",
                field="architecture.name")
        return builder  # type: ignore[no-any-return]
    return None


def list_architectures() -> list[str]:
    """Every name :func:`build_model` accepts: the built-in networks, ``mlp``, the installed
    ``rift.architectures`` entry points, then ``torchvision:<name>`` for each torchvision image
    classifier."""
    return ([*_BUILDERS, MLP, *installed_architectures()]
            + [PREFIX + name for name in torchvision_classifier_names()])


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
    if spec.name == MLP:
        features = spec.input_features if spec.input_features is not None \
            else channels * size * size
        return mlp(num_classes=spec.num_classes, in_channels=channels, input_features=features,
                   hidden=spec.hidden, mean=mean, std=std)
    if spec.input_features is not None or spec.hidden is not None:
        raise ConfigError("'input_features' and 'hidden' apply to the 'mlp' architecture only",
                          field="architecture.hidden")
    builder = _BUILDERS.get(spec.name) or _installed_builder(spec.name)
    if builder is None:
        installed = list(installed_architectures())
        raise UnknownArchitectureError(
            f"unknown architecture {spec.name!r}; known: {', '.join([*_BUILDERS, MLP])}"
            + (f", installed: {', '.join(installed)}" if installed else "")
            + f", or '{PREFIX}<name>' for a torchvision image classifier (e.g. "
            f"'{PREFIX}resnet50'); operators add architectures through the "
            f"'{ENTRY_POINT_GROUP}' entry-point group",
            field="architecture.name",
        )
    return builder(num_classes=spec.num_classes, in_channels=channels, mean=mean, std=std)
