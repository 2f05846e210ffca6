"""Clean and robust accuracy of a model on a set of images."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rift.attacks import PGD
from rift.cancellation import ShouldCancel, raise_if_cancelled
from rift.data import ImageTensors, iterate_batches
from rift.device import autocast


@dataclass(frozen=True)
class AccuracyReport:
    """Accuracies in percent; ``robust_loss`` is the mean cross-entropy on the adversarial images."""

    clean_accuracy: float
    robust_accuracy: float | None
    robust_loss: float | None
    examples: int

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``: the attack's random start draws from it, so
    evaluating the same weights twice gives the same robust accuracy (α = 0 equals θ_AT exactly)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


@torch.no_grad()
def _clean_logits(model: nn.Module, images: torch.Tensor, precision: str) -> torch.Tensor:
    with autocast(images.device, precision):
        return model(images).float()


def evaluate_accuracy(
    model: nn.Module,
    data: ImageTensors,
    *,
    attack: PGD | None,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
    precision: str = "fp32",
    should_cancel: ShouldCancel | None = None,
) -> AccuracyReport:
    """Clean accuracy and, when ``attack`` is given, robust accuracy under it (model in eval mode)."""
    was_training = model.training
    model.eval()
    generator = seeded_generator(device, seed)
    clean_correct = robust_correct = 0
    robust_loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    total = 0
    try:
        for images, labels in iterate_batches(data, batch_size, device=device):
            raise_if_cancelled(should_cancel)
            clean_correct += int((_clean_logits(model, images, precision).argmax(1) == labels).sum())
            if attack is not None:
                adversarial = attack.perturb(
                    model, images, labels, generator=generator, precision=precision,
                    should_cancel=should_cancel)
                logits = _clean_logits(model, adversarial, precision)
                robust_correct += int((logits.argmax(1) == labels).sum())
                # fp64 accumulation: robust losses are compared across tiny weight changes.
                robust_loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
            total += labels.numel()
    finally:
        model.train(was_training)
    if total == 0:
        return AccuracyReport(0.0, None, None, 0)
    return AccuracyReport(
        clean_accuracy=100.0 * clean_correct / total,
        robust_accuracy=100.0 * robust_correct / total if attack is not None else None,
        robust_loss=float(robust_loss_sum) / total if attack is not None else None,
        examples=total,
    )
