"""A direct, unoptimised transcription of the MRC protocol (docs/algorithm.md, "MRC"), kept as an
independent oracle for ``rift.mrc`` and as a benchmark baseline.

Every pass runs the whole network and, as in the reference code's README, every parameter keeps
``requires_grad`` so backward computes gradients that are then thrown away. Nothing is imported
from ``rift.mrc``: module selection, the weight norm, the ascent step, the projection and the loss
are written again here, so a bug in one of the engine's helpers cannot pass its own test. Not used
by the pipeline.

This is not the speed baseline: computing every parameter's gradient makes it slower than the
reference code. ``bench/mrc.py`` times ``rift.mrc`` against ``bench/reference_cost.py``, which
reproduces the reference code's cost: only the scored weight requires grad, a deep copy of the model
per module, batches reshuffled every pass, and a separate measuring pass after each ascent pass.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rift.config import MRCSpec


@dataclass(frozen=True)
class PlainRow:
    """One module's result: MRC as the spec defines it, the loss and robust accuracy at the point
    that defines it, and the largest loss reached after a pass (Δ = 0 not counted)."""

    mrc: float
    worst_robust_loss: float
    robust_accuracy_at_worst: float
    max_ascent_loss: float


# Written out again rather than imported from rift.scored_weights (see the module docstring).
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
             nn.ConvTranspose3d, nn.Linear, nn.Bilinear)


def _weights_of(module: nn.Module) -> list[torch.Tensor]:
    """The tensors perturbed together as one vector: an attention's q, k and v projections,
    packed in one tensor or held as three; a layer's weight."""
    if isinstance(module, nn.MultiheadAttention):
        if module.in_proj_weight is not None:
            return [module.in_proj_weight]
        return [module.q_proj_weight, module.k_proj_weight, module.v_proj_weight]
    return [module.weight] if isinstance(module, _WEIGHTED) else []


def _scored_module_names(model: nn.Module, spec: MRCSpec) -> list[str]:
    """Convolutions, linear layers and attention projections, each weight once (under the first
    module holding it)."""
    names: list[str] = []
    seen: set[tuple[int, ...]] = set()
    for name, module in model.named_modules():
        key = tuple(id(weight) for weight in _weights_of(module))
        if not key or key in seen:
            continue
        seen.add(key)
        if spec.modules is not None and name not in spec.modules:
            continue
        if spec.include and not any(fnmatch.fnmatchcase(name, pattern) for pattern in spec.include):
            continue
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in spec.exclude):
            continue
        names.append(name)
    return names


def _size(tensors: list[torch.Tensor], p: int | str) -> float:
    """||v||_p of v, the tensors flattened and concatenated, computed elementwise in float64."""
    flat = torch.cat([tensor.detach().double().reshape(-1) for tensor in tensors])
    if p == "inf":
        return max(abs(float(value)) for value in flat) if flat.numel() else 0.0
    return math.sqrt(float((flat * flat).sum()))


def _into_ball(deltas: list[torch.Tensor], radius: float, p: int | str) -> list[torch.Tensor]:
    if p == "inf":
        return [torch.minimum(torch.maximum(delta, torch.full_like(delta, -radius)),
                              torch.full_like(delta, radius)) for delta in deltas]
    size = _size(deltas, 2)
    if size <= radius:
        return deltas
    return [delta * (radius / size) for delta in deltas]


def _step(grads: list[torch.Tensor], spec: MRCSpec, radius: float) -> list[torch.Tensor]:
    if spec.ascent == "sgd":
        return [spec.lr * grad for grad in grads]
    if spec.p == "inf":
        return [spec.lr * radius * torch.sign(grad) for grad in grads]
    size = _size(grads, 2)
    if size == 0.0:
        return [torch.zeros_like(grad) for grad in grads]
    return [(spec.lr * radius / size) * grad for grad in grads]


def _forward(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    output = model(inputs)
    assert isinstance(output, torch.Tensor)
    return output.float()


@torch.no_grad()
def _loss_and_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       batch_size: int) -> tuple[float, float]:
    total, hits = 0.0, 0
    for start in range(0, len(labels), batch_size):
        logits = _forward(model, images[start:start + batch_size])
        y = labels[start:start + batch_size]
        # Cross-entropy written out: -log softmax of the true class, summed in float64.
        log_probs = logits.double() - torch.logsumexp(logits.double(), dim=1, keepdim=True)
        total -= float(log_probs.gather(1, y.view(-1, 1)).sum())
        hits += int((logits.argmax(dim=1) == y).sum())
    return total / len(labels), 100.0 * hits / len(labels)


def plain_mrc_table(
    model: nn.Module, adversarial_images: torch.Tensor, labels: torch.Tensor, spec: MRCSpec,
    *, seed: int = 0,
) -> dict[str, PlainRow]:
    """Every selected module's row, computed with full forward and backward passes.

    With ``spec.reshuffle`` the examples are permuted before each pass by
    ``torch.randperm(N, generator)`` (a generator seeded with ``seed`` per module), as the engine
    documents; the permutations compose from pass to pass.
    """
    model.eval()
    baseline_loss, baseline_accuracy = _loss_and_accuracy(model, adversarial_images, labels,
                                                          spec.batch_size)
    table: dict[str, PlainRow] = {}
    for name in _scored_module_names(model, spec):
        weights = _weights_of(model.get_submodule(name))
        originals = [weight.detach().clone() for weight in weights]
        flags = [weight.requires_grad for weight in weights]  # a frozen layer is scored too
        for weight in weights:
            weight.requires_grad_(True)
        radius = spec.eps * _size(originals, spec.p)
        images, targets = adversarial_images, labels
        generator = torch.Generator().manual_seed(seed)
        measured: list[tuple[float, float]] = []
        for _ in range(spec.steps):
            if spec.reshuffle:
                order = torch.randperm(len(targets), generator=generator).to(targets.device)
                images, targets = images[order], targets[order]
            for start in range(0, len(targets), spec.batch_size):
                model.zero_grad(set_to_none=True)
                logits = _forward(model, images[start:start + spec.batch_size])
                F.cross_entropy(logits, targets[start:start + spec.batch_size]).backward()
                with torch.no_grad():
                    grads = [weight.grad for weight in weights]
                    assert all(grad is not None for grad in grads)
                    steps = _step([grad for grad in grads if grad is not None], spec, radius)
                    for weight, step in zip(weights, steps, strict=True):
                        weight.add_(step)
            with torch.no_grad():
                moved = _into_ball([w - o for w, o in zip(weights, originals, strict=True)],
                                   radius, spec.p)
                for weight, original, delta in zip(weights, originals, moved, strict=True):
                    weight.copy_(original + delta)
            measured.append(_loss_and_accuracy(model, adversarial_images, labels,
                                               spec.batch_size))
        with torch.no_grad():
            for weight, original, flag in zip(weights, originals, flags, strict=True):
                weight.copy_(original)
                weight.requires_grad_(flag)
        model.zero_grad(set_to_none=True)
        reached = max(measured, key=lambda point: point[0])
        if spec.allow_negative or reached[0] > baseline_loss:
            worst = reached
        else:
            worst = (baseline_loss, baseline_accuracy)
        table[name] = PlainRow(mrc=worst[0] - baseline_loss, worst_robust_loss=worst[0],
                               robust_accuracy_at_worst=worst[1], max_ascent_loss=reached[0])
    return table


def plain_module_robust_criticality(
    model: nn.Module, adversarial_images: torch.Tensor, labels: torch.Tensor, spec: MRCSpec,
    *, seed: int = 0,
) -> dict[str, float]:
    """MRC per module name, computed with full forward and backward passes."""
    table = plain_mrc_table(model, adversarial_images, labels, spec, seed=seed)
    return {name: row.mrc for name, row in table.items()}
