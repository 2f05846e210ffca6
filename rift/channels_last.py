"""``channels_last: true``: the model's weights in channels-last memory format, and a model that
fails only in that format told so (not as a model that cannot take the data)."""

from __future__ import annotations

import torch
from torch import nn

from rift.config import ArchitectureSpec
from rift.errors import ConfigError
from rift.models import check_model_accepts


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model`` (in place; returned) with its 4-D parameters and buffers in channels-last
    memory format and its 5-D ones (a ``Conv3d``'s weight) in channels-last-3d. torch's
    ``model.to(memory_format=torch.channels_last)`` raises "required rank 4 tensor to use
    channels_last format" at the first 5-D weight, so a model with a ``Conv3d`` failed its run
    before any stage; tensors of other ranks have no such format and are left as they are.
    Values are unchanged (only the strides), so results are the model's."""
    def convert(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() == 4:
            return tensor.contiguous(memory_format=torch.channels_last)
        if tensor.dim() == 5:
            return tensor.contiguous(memory_format=torch.channels_last_3d)
        return tensor

    return model._apply(convert)


def check_accepts_channels_last(model: nn.Module, spec: ArchitectureSpec,
                                image_shape: tuple[int, int, int], *,
                                device: torch.device) -> None:
    """:func:`rift.models.check_model_accepts` for a model already in channels-last format.

    Where the probe fails in that format but passes in the default one, the cause is the
    setting, not the data: a forward that reshapes a channels-last activation with ``.view``
    (``out.view(out.size(0), -1)``, common in hand-written CIFAR networks) raises "view size is
    not compatible with input tensor's size and stride", which was reported as the model being
    unable to take the dataset's C×H×W inputs, with no word of ``channels_last``. The model is
    left in channels-last format when it passes.

    Raises:
        ConfigError: (field ``channels_last``) the model runs only in the default format;
            (field ``architecture``) it fails in both, with the default format's error.
    """
    try:
        check_model_accepts(model, spec, image_shape, device=device)
        return
    except ConfigError as channels_last_error:
        model.to(memory_format=torch.contiguous_format)
        check_model_accepts(model, spec, image_shape, device=device)  # raises the plain error
        cause = channels_last_error.__cause__
        detail = (f"{type(cause).__name__}: {' '.join(str(cause).split())[:300]}"
                  if cause is not None else channels_last_error.message)
        raise ConfigError(
            f"architecture {spec.name!r} runs on the dataset's inputs in the default memory "
            "format but fails with channels_last: true (weights and activations in channels-last "
            f"format): {detail}. A forward that reshapes an activation with .view does this; "
            "use .reshape or .flatten there, or set channels_last: false",
            field="channels_last") from channels_last_error
