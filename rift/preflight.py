"""The preflight check: θ_AT's clean and robust accuracy on a small sample of the job's test split,
measured before any stage runs (docs/algorithm.md, "Preflight").

A checkpoint scored on inputs it was not trained for (missing or wrong ``architecture.mean/std``,
another dataset, another class order) is near chance on clean data; MRC, fine-tuning and the α
curve would then all "succeed" on a meaningless model. Near-chance clean accuracy therefore fails
the run at once, with the figures and the likely causes in the message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from rift.attacks import PGD
from rift.config import PreflightSpec
from rift.data import ImageTensors
from rift.errors import RiftError
from rift.evaluation import evaluate_accuracy


class PreflightError(RiftError):
    """θ_AT is near chance on the job's own data: the inputs do not match the checkpoint."""

    code = "preflight_failed"


@dataclass(frozen=True)
class PreflightReport:
    """Accuracies in percent on ``examples`` test examples; ``threshold`` is the clean accuracy
    below which the run is refused (chance + ``spec.margin`` points)."""

    examples: int
    clean_accuracy: float
    robust_accuracy: float | None
    chance_accuracy: float
    threshold: float

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _sample(data: ImageTensors, count: int, seed: int) -> ImageTensors:
    if count >= len(data):
        return data
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count]
    return data.select(index)


def preflight_check(model: nn.Module, data: ImageTensors, attack: PGD, spec: PreflightSpec, *,
                    num_classes: int, batch_size: int, device: torch.device, seed: int,
                    precision: str = "fp32", normalization_given: bool,
                    should_cancel: Callable[[], bool] | None = None) -> PreflightReport:
    """Measure θ_AT on a seeded sample of ``data``; raise PreflightError when its clean accuracy
    is below chance + ``spec.margin`` percentage points."""
    sample = _sample(data, spec.examples, seed)
    report = evaluate_accuracy(model, sample, attack=attack, batch_size=batch_size,
                               device=device, seed=seed, precision=precision,
                               should_cancel=should_cancel)
    chance = 100.0 / num_classes
    threshold = min(chance + spec.margin, 100.0)
    result = PreflightReport(len(sample), report.clean_accuracy, report.robust_accuracy,
                             chance, threshold)
    if report.clean_accuracy < threshold:
        causes = ["the checkpoint was trained with input normalisation: set "
                  "architecture.normalization (e.g. 'cifar10') or architecture.mean/std"
                  if not normalization_given else
                  "architecture.mean/std differ from those the checkpoint was trained with",
                  "the dataset is not the one the checkpoint was trained on",
                  "the class order (label numbering) differs from training",
                  "the checkpoint is not trained (or not for this architecture's input size)"]
        raise PreflightError(
            f"preflight: the checkpoint's clean accuracy on {len(sample)} test examples is "
            f"{report.clean_accuracy:.1f}% (robust {report.robust_accuracy or 0.0:.1f}%), near "
            f"chance ({chance:.1f}% for {num_classes} classes; the run needs at least "
            f"{threshold:.1f}%). Likely causes: " + "; ".join(causes) + ". Set preflight.examples "
            "to 0 to skip this check.")
    return result
