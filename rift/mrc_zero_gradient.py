"""Which MRC modules the loss on the MRC set does not depend on: their weights' gradient is
exactly zero on every batch.

Such a module is connected to the output (``rift.mrc.unreachable_modules`` finds the modules
autograd does not reach at all) but cannot change it: a branch behind a zero gate (``x +
0.0 * branch(x)``, a BatchNorm whose weight is 0), a block pruned to zero, a ReLU after it that no
input activates. Its ascent starts from a zero gradient on every batch, so it never moves
(``rift.mrc.ascent_step`` takes no step from a zero gradient) and its MRC is exactly 0 by
construction, not because robustness does not need it. Before, the selection rule chose it as the
least critical module and the run then failed at fine-tuning (``rift.finetune`` refuses a module
whose first step's gradient is exactly zero). The table keeps its row, flagged, and the selection
takes the next module.

One forward and backward pass of the model per batch (gradients of all modules at once), in the
same precision as the ascent: far less than one module's ascent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from rift.device import autocast


def zero_gradient_modules(forward: Callable[[torch.Tensor], torch.Tensor],
                          weights: Mapping[str, Sequence[torch.Tensor]],
                          image_batches: Sequence[torch.Tensor],
                          label_batches: Sequence[torch.Tensor], *, precision: str = "fp32",
                          part_size: int | None = None) -> list[str]:
    """The names of ``weights`` (module name → the tensors MRC perturbs together) whose every
    tensor gets a gradient of exactly zero (or none) from the mean cross-entropy of every batch,
    through ``forward`` (inputs to logits: the model as MRC runs it, in its current mode), in
    ``weights``' order. ``part_size`` splits each batch into
    parts of that many examples (after out-of-memory); a part's non-zero gradient counts as
    non-zero, so gradients that would cancel across parts never flag a module. Every
    ``requires_grad`` flag is restored."""
    names = list(weights)
    tensors = [tensor for name in names for tensor in weights[name]]
    flags = [tensor.requires_grad for tensor in tensors]
    moved = [False] * len(tensors)
    try:
        for tensor in tensors:
            tensor.requires_grad_(True)
        with torch.enable_grad():
            for images, labels in zip(image_batches, label_batches, strict=True):
                size = part_size or len(labels)
                for x, y in zip(images.split(size), labels.split(size), strict=True):
                    with autocast(y.device, precision):
                        logits = forward(x)
                    loss = F.cross_entropy(logits.float(), y)
                    if not loss.requires_grad:
                        continue
                    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
                    for i, grad in enumerate(grads):
                        moved[i] = moved[i] or (grad is not None and bool(grad.any()))
                if all(moved):
                    break
    finally:
        for tensor, flag in zip(tensors, flags, strict=True):
            tensor.requires_grad_(flag)
    dead, start = [], 0
    for name in names:
        count = len(weights[name])
        if not any(moved[start:start + count]):
            dead.append(name)
        start += count
    return dead
