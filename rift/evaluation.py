"""Clean and robust accuracy of a model on a set of images.

Each example's PGD random start is drawn from a generator of its own, seeded by the evaluation
seed and the example's index in the data (:func:`example_noise`): an example starts from the same
point whatever batch, chunk or order it is attacked in, so the robust count of a model does not
depend on how the evaluation is cut up (``rift.sequential_attack`` stops some early), and two
models compared on the same data (θ_AT and θ_α) are attacked from the same starts.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rift.attacks import PGD
from rift.cancellation import ShouldCancel, raise_if_cancelled
from rift.data import DatasetSplits, ImageTensors, iterate_batches
from rift.device import autocast
from rift.model_state import input_dtype, restore_training_modes, training_modes


@dataclass(frozen=True)
class AccuracyReport:
    """Accuracies in percent; ``robust_loss`` is the mean cross-entropy on the adversarial images."""

    clean_accuracy: float
    robust_accuracy: float | None
    robust_loss: float | None
    examples: int

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def evaluated_examples(splits: DatasetSplits, split: str, max_examples: int | None
                       ) -> ImageTensors:
    """The examples an evaluation on ``split`` ('test' or 'validation') measures: its first
    ``max_examples`` (``evaluation.max_examples``), or all of them when None or more."""
    data = splits.test if split == "test" else splits.validation
    return data.head(max_examples) if max_examples is not None and max_examples < len(data) else data


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


#: Largest table of random starts :class:`RandomStarts` keeps (CPU memory): 10,000 CIFAR-size
#: examples take 123 MB; beyond the budget every draw is made again.
RANDOM_START_CACHE_MAX_BYTES = 1 << 30


class RandomStarts:
    """The :func:`example_noise` draws of one evaluation seed over a set of ``total`` examples,
    each made once and kept (on the CPU) for every later attack of the same examples.

    The interpolation stage attacks the same examples at up to one α per grid point, from the
    same starts: drawing them costs tens of µs per example on the CPU, which on a GPU is more than
    the attack itself. A table over ``max_bytes`` is not kept (each draw is made again)."""

    def __init__(self, seed: int, total: int, *,
                 max_bytes: int = RANDOM_START_CACHE_MAX_BYTES) -> None:
        self.seed, self.total, self.max_bytes = seed, total, max_bytes
        self._table: torch.Tensor | None = None
        self._drawn = torch.zeros(total, dtype=torch.bool)

    def draw(self, indices: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Random starts of the examples at ``indices`` (in [0, total)), (len, *shape) on the CPU:
        the values :func:`example_noise` gives."""
        indices = indices.cpu()
        if self.total * math.prod(shape) * 4 > self.max_bytes:
            return example_noise(indices, shape, self.seed)
        if self._table is None or tuple(self._table.shape[1:]) != shape:
            self._table = torch.empty((self.total, *shape))
            self._drawn.fill_(False)
        missing = indices[~self._drawn[indices]]
        if len(missing):
            self._table[missing] = example_noise(missing, shape, self.seed)
            self._drawn[missing] = True
        return self._table[indices]


def seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``, for attacks made once on a whole set (MRC's
    adversarial set draws its random starts from it batch by batch, so a rerun makes the same set).
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def correct_predictions(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Whether each row of ``logits`` predicts its label: the argmax is the label and every logit
    of the row is finite. torch's argmax takes a NaN (or the first +inf) for the largest value,
    so a θ_α with NaN weights "predicted" class 0 for every example: on a test set where class 0
    is common its clean and robust accuracy both read as that class's share, above θ_AT's, and
    the α rule returned the NaN weights. Non-finite logits are never a correct answer."""
    return (logits.argmax(1) == labels) & torch.isfinite(logits).all(1)


@torch.no_grad()
def _clean_logits(model: nn.Module, images: torch.Tensor, precision: str) -> torch.Tensor:
    with autocast(images.device, precision):
        return model(images.to(input_dtype(model))).float()


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
    clean_model: nn.Module | None = None,
) -> AccuracyReport:
    """Clean accuracy and, when ``attack`` is given, robust accuracy under it (model in eval mode),
    with per-example random starts (:func:`example_noise`). A float64 or half model is given
    its inputs in its own dtype (:func:`rift.model_state.input_dtype`).

    ``clean_model`` (default ``model``) is the one whose clean pass is counted: the interpolation
    stage counts clean accuracy on the model itself and attacks a BatchNorm-folded copy
    (``rift.batchnorm_folding``), whose logits differ by rounding, enough to flip an example at
    a near tie; an evaluation that is to give the stage's numbers does the same."""
    clean_model = model if clean_model is None else clean_model
    # Every submodule's own mode, restored as it was (a caller's frozen BatchNorm stays frozen).
    modes = training_modes(model) + training_modes(clean_model)
    model.eval()
    clean_model.eval()
    clean_correct = robust_correct = 0
    robust_loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    total = 0
    try:
        for images, labels in iterate_batches(data, batch_size, device=device):
            raise_if_cancelled(should_cancel)
            clean_correct += int(correct_predictions(
                _clean_logits(clean_model, images, precision), labels).sum())
            if attack is not None:
                index = torch.arange(total, total + labels.numel())
                noise = (example_noise(index, tuple(images.shape[1:]), seed)
                         if attack.random_start else None)
                adversarial = attack.perturb(
                    model, images, labels, precision=precision, should_cancel=should_cancel,
                    noise=noise)
                logits = _clean_logits(model, adversarial, precision)
                robust_correct += int(correct_predictions(logits, labels).sum())
                # fp64 accumulation: robust losses are compared across tiny weight changes.
                robust_loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
            total += labels.numel()
    finally:
        restore_training_modes(modes)
    if total == 0:
        return AccuracyReport(0.0, None, None, 0)
    return AccuracyReport(
        clean_accuracy=100.0 * clean_correct / total,
        robust_accuracy=100.0 * robust_correct / total if attack is not None else None,
        robust_loss=float(robust_loss_sum) / total if attack is not None else None,
        examples=total,
    )
