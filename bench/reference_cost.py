"""MRC with the reference code's cost model, as a baseline to time ``rift.mrc`` against.

What the public reference implementation does per module, reproduced here for its cost (docs/algorithm.md,
"The reference protocol and where we differ"): it deep-copies the whole model, freezes every parameter except
the scored weight (so backward computes only that weight's gradient, down to the module), runs SGD
ascent with full forward passes over the adversarial set in batches reshuffled every pass, projects
Δ onto the ball after each pass, then runs a separate full measuring pass over the set. The running
maximum starts at the unperturbed loss here (not at 0 as in the reference), so the values can be
compared with ``rift.mrc``; that choice costs nothing. Used by ``bench/mrc.py`` and
``bench/pipeline.py --reference-cost``; not part of the library.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from rift.config import MRCSpec
from rift.mrc import module_weights, project_onto_ball, select_modules, weight_norm


@torch.no_grad()
def _measure(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int) -> float:
    loss_sum = torch.zeros((), dtype=torch.float64, device=images.device)
    for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
        loss_sum += F.cross_entropy(model(x).float(), y, reduction="sum").double()
    return float(loss_sum) / len(labels)


def reference_cost_mrc(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       spec: MRCSpec, *, seed: int = 0) -> dict[str, float]:
    """MRC per module name (worst loss − unperturbed loss), at the reference code's cost."""
    model.eval()
    baseline = _measure(model, images, labels, spec.batch_size)
    generator = torch.Generator().manual_seed(seed)
    values: dict[str, float] = {}
    for name in select_modules(model, spec):
        work = copy.deepcopy(model).eval()  # the reference copies the model for every module
        for parameter in work.parameters():
            parameter.requires_grad_(False)
        # The reference code scores one tensor per module (no attention with separate q/k/v).
        (weight,) = module_weights(work, name)
        weight.requires_grad_(True)
        original = weight.detach().clone()
        radius = spec.eps * weight_norm(original, spec.p)
        optimizer = torch.optim.SGD([weight], lr=spec.lr)
        worst = baseline
        for _ in range(spec.steps):
            order = torch.randperm(len(labels), generator=generator).to(labels.device)
            for index in order.split(spec.batch_size):
                optimizer.zero_grad(set_to_none=True)
                # Ascent: minimise the negated loss.
                (-F.cross_entropy(work(images[index]).float(), labels[index])).backward()
                optimizer.step()
            with torch.no_grad():
                weight.copy_(original + project_onto_ball(weight - original, radius, spec.p))
            worst = max(worst, _measure(work, images, labels, spec.batch_size))
        values[name] = worst - baseline
        del work, optimizer
    return values
