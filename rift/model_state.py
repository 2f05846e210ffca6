"""Model mode and gradient flags, set for a computation and put back afterwards, in one place.

Attacks and MRC run the model in eval mode (BatchNorm on its running statistics) with every
parameter frozen, MRC then unfreezing one module's weight at a time; fine-tuning trains one
module's parameters. Each needs the caller's train/eval mode and ``requires_grad`` flags back
afterwards, also when it raises (a cancellation or a numerical error mid-way).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


@contextmanager
def frozen_except(model: nn.Module, trainable: Iterable[nn.Parameter] = (), *,
                  eval_mode: bool = True) -> Iterator[nn.Module]:
    """Freeze every parameter of ``model`` except ``trainable`` (those get ``requires_grad``),
    in eval mode unless ``eval_mode=False``; on exit, every submodule's mode and every flag are
    restored."""
    modes = training_modes(model)
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in trainable:
            parameter.requires_grad_(True)
        if eval_mode:
            model.eval()
        yield model
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        restore_training_modes(modes)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode, every submodule's own mode put back on exit (parameters'
    ``requires_grad`` untouched, unlike :func:`frozen_except`). For measurements that only read
    the model: ``model.train(was_training)`` afterwards switched a BatchNorm the caller froze with
    ``bn.eval()`` inside a training model back to train mode."""
    modes = training_modes(model)
    try:
        model.eval()
        yield model
    finally:
        restore_training_modes(modes)


def training_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Each submodule of ``model`` (itself included) with its ``training`` flag, for
    :func:`restore_training_modes`. ``model.train(was_training)`` alone set every submodule to
    the top-level flag: a caller's BatchNorm frozen with ``bn.eval()`` inside a model in train
    mode came back from an attack or an evaluation in train mode, its running statistics then
    silently following the caller's next batches."""
    return [(module, module.training) for module in model.modules()]


def restore_training_modes(modes: Iterable[tuple[nn.Module, bool]]) -> None:
    """Put back the flags :func:`training_modes` recorded, module by module."""
    for module, training in modes:
        module.training = training


def input_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype ``model`` computes in: its first floating parameter's (else buffer's);
    float32 for a model with neither. The library's data are float32 and the pipeline builds
    float32 models, but a user's own model given to the lower-level functions (attacks,
    ``evaluate_accuracy``, ``module_robust_criticality``) may be ``.double()`` or ``.half()``:
    those cast their inputs to this dtype where they call the model (torch's own modules refuse
    a float32 input with a float64 weight)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def functional_call_restoring(model: nn.Module, tensors: dict[str, torch.Tensor],
                              args: tuple[Any, ...]) -> Any:
    """``torch.func.functional_call(model, tensors, args)`` that leaves every submodule holding
    its own parameters and buffers afterwards, whatever happened inside.

    torch's own restore fails on a module registered under two names (``self.blocks =
    nn.ModuleList([self.block, self.block])``): it records the second name's "original" after
    swapping the first, so the model kept the tensor passed in instead of its ``Parameter``
    (measured on torch 2.14: ``model.block.weight is tensors["block.weight"]``). Under
    ``vmap`` (the stacked MRC engine) that tensor is a batched one, and the next
    ``state_dict()`` failed with "your tensor may have escaped from inside a function being
    vmapped"; elsewhere the module's weight silently stopped being a parameter."""
    held = [(module, dict(module._parameters), dict(module._buffers))
            for module in model.modules()]
    try:
        return torch.func.functional_call(model, tensors, args)
    finally:
        for module, parameters, buffers in held:
            module._parameters.update(parameters)
            module._buffers.update(buffers)
