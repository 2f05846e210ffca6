"""A direct, unoptimised transcription of the MRC protocol, kept to check and benchmark
``rift.mrc``: every pass runs the whole network, and, as in the reference code, every parameter
keeps ``requires_grad`` so backward computes gradients that are then thrown away.

Not used by the pipeline. Same arithmetic order as ``rift.mrc`` so results agree to float tolerance.

This is not the speed baseline: computing every parameter's gradient makes it slower than the
reference code. ``bench/mrc.py`` times ``rift.mrc`` against ``bench/reference_cost.py``, which
reproduces the reference code's cost: only the scored weight requires grad, a deep copy of the model
per module, batches reshuffled every pass, and a separate measuring pass after each ascent pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rift.config import MRCSpec
from rift.mrc import module_weight, project_onto_ball, select_modules, weight_norm


@torch.no_grad()
def _robust_loss_and_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                              batch_size: int) -> tuple[float, float]:
    loss_sum, correct = 0.0, 0
    for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
        logits = model(x).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum").double())
        correct += int((logits.argmax(1) == y).sum())
    return loss_sum / len(labels), 100.0 * correct / len(labels)


def plain_module_robust_criticality(
    model: nn.Module, adversarial_images: torch.Tensor, labels: torch.Tensor, spec: MRCSpec
) -> dict[str, float]:
    """MRC per module name, computed with full forward and backward passes."""
    model.eval()
    baseline_loss, _ = _robust_loss_and_accuracy(model, adversarial_images, labels,
                                                 spec.batch_size)
    values: dict[str, float] = {}
    for name in select_modules(model, spec):
        weight = module_weight(model, name)
        original = weight.detach().clone()
        radius = spec.eps * weight_norm(original, spec.p)
        worst = baseline_loss
        for _ in range(spec.steps):
            for x, y in zip(adversarial_images.split(spec.batch_size),
                            labels.split(spec.batch_size), strict=True):
                model.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x).float(), y)
                loss.backward()
                with torch.no_grad():
                    assert weight.grad is not None
                    weight.add_(weight.grad, alpha=spec.lr)
            with torch.no_grad():
                weight.copy_(original + project_onto_ball(weight - original, radius, spec.p))
            loss_value, _ = _robust_loss_and_accuracy(model, adversarial_images, labels,
                                                      spec.batch_size)
            worst = max(worst, loss_value)
        with torch.no_grad():
            weight.copy_(original)
        model.zero_grad(set_to_none=True)
        values[name] = worst - baseline_loss
    return values
