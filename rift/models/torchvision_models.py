"""torchvision ImageNet classifiers (``torchvision:<name>``), built without weights.

Normalisation is added by switching the instance to a subclass whose ``forward`` normalises and then
calls the original ``forward``. Unlike a wrapper module this adds no prefix to the module names, so
torchvision's own checkpoints load unchanged; unlike a forward pre-hook it is seen by
``torch.fx.symbolic_trace``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from rift.errors import ConfigError, UnknownArchitectureError
from rift.models.logits_output import logits_of
from rift.models.normalization import normalize_input, register_input_normalization

# A call torch.fx records as one node instead of tracing into it (as in logits_output).
torch.fx.wrap("logits_of")

PREFIX = "torchvision:"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Models whose auxiliary heads make `forward` return a tuple in train mode: built without them,
# unless the checkpoint holds them (keys under these prefixes), as a model trained from scratch
# with torchvision's defaults does; its train-mode tuple is then read by `logits_of`.
AUXILIARY_HEAD_PREFIXES = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


def holds_auxiliary_heads(name: str, checkpoint_keys: Iterable[str]) -> bool:
    """Whether a checkpoint with ``checkpoint_keys`` holds the auxiliary heads of torchvision
    classifier ``name`` (False for a model without any)."""
    prefixes = AUXILIARY_HEAD_PREFIXES.get(name)
    return prefixes is not None and any(key.startswith(prefixes) for key in checkpoint_keys)


def torchvision_classifier_names() -> list[str]:
    """Names of torchvision's image-classification builders (e.g. ``resnet50``), sorted."""
    import torchvision  # Deferred: importing torchvision costs time the API should not pay.

    return sorted(torchvision.models.list_models(module=torchvision.models))


def default_statistics(in_channels: int) -> tuple[list[float], list[float]]:
    """ImageNet mean/std; for other channel counts, their channel average repeated."""
    if in_channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return (
        [sum(IMAGENET_MEAN) / 3] * in_channels,
        [sum(IMAGENET_STD) / 3] * in_channels,
    )


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    # Only the stem's input width changes; its name stays, so the rest of a checkpoint still fits.
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(
                parent,
                child_name,
                nn.Conv2d(
                    in_channels,
                    module.out_channels,
                    module.kernel_size,  # type: ignore[arg-type]
                    stride=module.stride,  # type: ignore[arg-type]
                    padding=module.padding,  # type: ignore[arg-type]
                    dilation=module.dilation,  # type: ignore[arg-type]
                    groups=1,
                    bias=module.bias is not None,
                    padding_mode=module.padding_mode,
                ),
            )
            return
    raise ConfigError(
        f"cannot adapt this torchvision model to {in_channels} input channels: no Conv2d found",
        field="architecture.in_channels",
    )


def _add_input_normalization(model: nn.Module, *, structured: bool = False) -> None:
    """Normalise the input inside ``forward``; ``structured``: the output may be a structure
    (the auxiliary heads' tuple in train mode), from which :func:`logits_of` takes the logits."""
    base = type(model)

    class Normalized(base):  # type: ignore[valid-type, misc]
        def forward(self, x: Tensor) -> Tensor:
            output = super().forward(normalize_input(self, x))
            return logits_of(output, self.training) if structured else output

    # Same names as the base class, so reprs and traced GraphModules read as torchvision's.
    Normalized.__name__ = base.__name__
    Normalized.__qualname__ = base.__qualname__
    model.__class__ = Normalized


def _construct(
    get_model: Callable[..., nn.Module], name: str, kwargs: dict[str, object]
) -> nn.Module:
    try:
        return get_model(name, **kwargs)
    except NotImplementedError:
        # A few builders (RegNet) compute layer widths with tensors and read them back, which
        # the meta device cannot do. Build those on the CPU and move the result to meta.
        if torch.get_default_device().type != "meta":
            raise
        with torch.device("cpu"):
            model = get_model(name, **kwargs)
        return model.to("meta")


def build_torchvision_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 224,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    auxiliary_heads: bool = False,
) -> nn.Module:
    """Build ``torchvision.models.<name>`` with random weights (never downloads).

    ``mean``/``std`` ``None`` means ImageNet statistics. Input (N, C, H, W) in [0, 1].
    ``auxiliary_heads``: GoogLeNet and Inception v3 with their auxiliary heads (to hold a
    checkpoint trained with them: :func:`holds_auxiliary_heads`); ``forward`` still returns the
    logits alone in train mode (the heads run, unused: the eval output does not depend on them).
    """
    import torchvision

    known = torchvision_classifier_names()
    if name not in known:
        raise UnknownArchitectureError(
            f"unknown torchvision classifier {name!r}; known: {', '.join(known)}",
            field="architecture.name",
        )
    kwargs: dict[str, object] = {"weights": None, "num_classes": num_classes}
    auxiliary_heads = auxiliary_heads and name in AUXILIARY_HEAD_PREFIXES
    if name in AUXILIARY_HEAD_PREFIXES:
        kwargs.update(aux_logits=auxiliary_heads, init_weights=True)
    if name.startswith("vit_"):
        # Vision transformers fix their input size at construction time.
        kwargs["image_size"] = image_size
    try:
        model = _construct(torchvision.models.get_model, name, kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"cannot build torchvision:{name} with num_classes={num_classes}, "
            f"image_size={image_size}: {exc}",
            field="architecture",
        ) from exc
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    if mean is None or std is None:
        mean, std = default_statistics(in_channels)
    register_input_normalization(model, mean, std, in_channels)
    _add_input_normalization(model, structured=auxiliary_heads)
    return model
