"""Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) differentiated in eval mode.

Every stage but fine-tuning differentiates the model in eval mode: PGD with respect to the input,
MRC with respect to the weights. cuDNN's RNN kernels have no backward outside training mode: on a
GPU the first gradient through an ``nn.LSTM`` in eval mode raises "cudnn RNN backward can only be
called in training mode" (pytorch/pytorch#5878, #15788), so every LSTM/GRU job failed in its first
model check. Putting the layer in train mode instead would turn on its inter-layer dropout.

:func:`differentiable_in_eval_mode` makes each such layer run torch's own (non-cuDNN) kernels
while it is in eval mode with gradients enabled: the same function (up to float rounding),
differentiable. Evaluation under ``torch.no_grad()`` and training keep cuDNN. The switch is
``torch.backends.cudnn.enabled``, set for the layer's forward only and put back afterwards (also
when forward raises); the other cuDNN settings (deterministic, benchmark) are left alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: The attribute that holds, on a layer inside its forward, the cuDNN setting to put back.
_SAVED = "_rift_cudnn_enabled"


def _before(module: nn.Module, _: Any) -> None:
    if not module.training and torch.is_grad_enabled():
        setattr(module, _SAVED, torch.backends.cudnn.enabled)
        torch.backends.cudnn.enabled = False


def _after(module: nn.Module, _: Any, __: Any) -> None:
    saved = module.__dict__.pop(_SAVED, None)
    if saved is not None:
        torch.backends.cudnn.enabled = saved


def differentiable_in_eval_mode(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.RNNBase`` layer (LSTM, GRU, RNN) running without cuDNN while
    it is in eval mode with gradients enabled (see the module docstring); returns ``model``."""
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            module.register_forward_pre_hook(_before)
            module.register_forward_hook(_after, always_call=True)
    return model
