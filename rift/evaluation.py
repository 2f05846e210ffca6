"""Clean and robust accuracy of a model on a set of images.

Each example's PGD random start is drawn from a generator of its own, seeded by the evaluation
seed and the example's index in the data (:func:`example_noise`): an example starts from the same
point whatever batch, chunk or order it is attacked in, so the robust count of a model does not
depend on how the evaluation is cut up (``rift.sequential_attack`` stops some early), and two
models compared on the same data (θ_AT and θ_α) are attacked from the same starts.
"""

from __future__ import annotations

import hashlib
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


# torch's CPU generator keeps only the low 32 bits of a seed, so example seeds are mixed into
# 32 bits: index·odd + hash(seed) mod 2^32 gives every example of an evaluation its own seed.
_SEED_BITS = 2**32
_INDEX_MULTIPLIER = 0x9E3779B1  # odd: a bijection on 32-bit indices


def _seed_hash(seed: int) -> int:
    return int.from_bytes(hashlib.blake2b(str(seed).encode(), digest_size=4).digest(), "big")


def example_noise(indices: torch.Tensor, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Uniform [0, 1) random-start draws, one tensor of ``shape`` per example index, each from a
    CPU generator of its own; returns (len(indices), *shape) on the CPU (see the module
    docstring). About 10 µs per 3×32×32 example on a CPU: small beside a PGD step."""
    rows, seed_hash = [], _seed_hash(seed)
    for index in indices.tolist():
        generator = torch.Generator().manual_seed(
            (index * _INDEX_MULTIPLIER + seed_hash) % _SEED_BITS)
        rows.append(torch.rand(shape, generator=generator))
    return torch.stack(rows) if rows else torch.empty((0, *shape))


def seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``, for attacks made once on a whole set (MRC's
    adversarial set draws its random starts from it batch by batch, so a rerun makes the same set).
    """
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
    """Clean accuracy and, when ``attack`` is given, robust accuracy under it (model in eval mode),
    with per-example random starts (:func:`example_noise`)."""
    was_training = model.training
    model.eval()
    clean_correct = robust_correct = 0
    robust_loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    total = 0
    try:
        for images, labels in iterate_batches(data, batch_size, device=device):
            raise_if_cancelled(should_cancel)
            clean_correct += int((_clean_logits(model, images, precision).argmax(1) == labels).sum())
            if attack is not None:
                index = torch.arange(total, total + labels.numel())
                noise = (example_noise(index, tuple(images.shape[1:]), seed)
                         if attack.random_start else None)
                adversarial = attack.perturb(
                    model, images, labels, precision=precision, should_cancel=should_cancel,
                    noise=noise)
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
