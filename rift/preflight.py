"""The preflight check: θ_AT's clean and robust accuracy on a small sample of the job's test split,
measured before any stage runs (docs/algorithm.md, "Preflight").

A checkpoint scored on inputs it was not trained for (missing or wrong ``architecture.mean/std``,
another dataset, another class order) is near chance on clean data; MRC, fine-tuning and the α
curve would then all "succeed" on a meaningless model. Near-chance clean accuracy therefore fails
the run at once, with the figures and the likely causes in the message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from rift.attacks import PGD
from rift.config import PreflightSpec
from rift.data import ImageTensors, iterate_batches
from rift.device import autocast
from rift.errors import RiftError
from rift.evaluation import evaluate_accuracy
from rift.model_state import eval_mode
from rift.normalization_check import better_normalization

#: A model answering one class for at least this share of the sample (and at least
#: :data:`COLLAPSE_FACTOR` times that class's share of the labels) is warned about.
COLLAPSE_SHARE = 0.5
COLLAPSE_FACTOR = 2.0
#: The fewest test examples the preflight judges θ_AT on. On fewer,
#: one example moves the clean accuracy by more than 5 points, half the default margin, and the
#: bar itself degenerates: a sample of one example is 100 % one class, so chance was 100 % and
#: a single miss failed the run (found by the config fuzz with dataset.max_test_examples 1). A
#: smaller sample is measured and reported, with a warning, but not judged.
MIN_JUDGED_EXAMPLES = 20


class PreflightError(RiftError):
    """θ_AT is near chance on the job's own data: the inputs do not match the checkpoint."""

    code = "preflight_failed"


@dataclass(frozen=True)
class PreflightReport:
    """Accuracies in percent on ``examples`` test examples; ``threshold`` is the clean accuracy
    below which the run is refused (chance, as :func:`chance_accuracy`, + ``spec.margin``
    points; when chance is a majority share, at most halfway from it to 100 %)."""

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


def chance_accuracy(labels: torch.Tensor, num_classes: int) -> tuple[float, str]:
    """The clean accuracy (percent) of a model that ignores its input, on examples with these
    ``labels``, and why: 100 / ``num_classes`` for a uniform guess, or, when larger, the share of
    the most frequent label (always answering it). A model fed inputs it was not trained for
    often answers one class for everything: on a test split of 90 % one class, the uniform
    guess's 10 % (or 50 %) let such a model pass with 90 %."""
    uniform = 100.0 / num_classes
    if len(labels) == 0:
        return uniform, f"one guess in {num_classes} classes"
    counts = torch.bincount(labels.cpu())
    top = int(counts.argmax())
    majority = 100.0 * float(counts[top]) / len(labels)
    if majority <= uniform:
        return uniform, f"one guess in {num_classes} classes"
    return majority, (f"always answering class {top}, the most frequent in the sample, scores "
                      "that")


def preflight_check(model: nn.Module, data: ImageTensors, attack: PGD, spec: PreflightSpec, *,
                    num_classes: int, batch_size: int, device: torch.device, seed: int,
                    precision: str = "fp32", normalization_given: bool,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    should_cancel: Callable[[], bool] | None = None) -> PreflightReport:
    """Measure θ_AT on a seeded sample of ``data``; raise PreflightError when its clean accuracy
    is below chance + ``spec.margin`` percentage points and the sample is large enough to judge
    (:func:`judged`; :func:`unjudged_warning` says when it is not). The error names a usual normalisation
    under which the sample's clean accuracy would pass, when one does
    (:func:`rift.normalization_check.better_normalization`; ``mean``/``std``: the configured
    ones, None: none)."""
    sample = _sample(data, spec.examples, seed)
    report = evaluate_accuracy(model, sample, attack=attack, batch_size=batch_size,
                               device=device, seed=seed, precision=precision,
                               should_cancel=should_cancel)
    chance, chance_reason = chance_accuracy(sample.labels, num_classes)
    threshold = min(chance + spec.margin, 100.0)
    if chance > 100.0 / num_classes:
        # Above a large majority share a margin in points can exceed what a good model reaches
        # (95 % majority + 10 points): ask for at most halfway from chance to 100 %.
        threshold = min(threshold, (chance + 100.0) / 2)
    result = PreflightReport(len(sample), report.clean_accuracy, report.robust_accuracy,
                             chance, threshold)
    if report.clean_accuracy < threshold and judged(len(sample)):
        causes = ["the checkpoint was trained with input normalisation: set "
                  "architecture.normalization (e.g. 'cifar10') or architecture.mean/std"
                  if not normalization_given else
                  "architecture.mean/std differ from those the checkpoint was trained with",
                  # RiFT feeds images in [0, 1]; (x - 0) / (1/255) gives the 0-255 scale back.
                  "the checkpoint was trained on pixel values in [0, 255]: set "
                  "architecture.mean [0] and architecture.std [0.00392156862745098] (1/255)",
                  "the dataset is not the one the checkpoint was trained on",
                  "the class order (label numbering) differs from training",
                  "the checkpoint is not trained (or not for this architecture's input size)"]
        finding = better_normalization(
            model, sample, mean=mean, std=std, configured_accuracy=report.clean_accuracy,
            batch_size=batch_size, device=device, precision=precision, bar=threshold)
        measured = "" if finding is None else f" Measured: {finding.sentence()}."
        raise PreflightError(
            f"preflight: the checkpoint's clean accuracy on {len(sample)} test examples is "
            f"{report.clean_accuracy:.1f}% (robust {report.robust_accuracy or 0.0:.1f}%), near "
            f"chance ({chance:.1f}%: {chance_reason}; the run needs at least "
            f"{threshold:.1f}%). Likely causes: " + "; ".join(causes) + "." + measured
            + " Set preflight.examples to 0 to skip this check.")
    return result


def judged(examples: int) -> bool:
    """Whether a sample of ``examples`` test examples is large enough for the preflight's
    verdict (:data:`MIN_JUDGED_EXAMPLES`)."""
    return examples >= MIN_JUDGED_EXAMPLES


def unjudged_warning(examples: int) -> str | None:
    """The ``warning`` of a preflight measured on too few examples to judge, or None."""
    if examples == 0 or judged(examples):
        return None
    return (f"the preflight measured the checkpoint on {examples} test example(s), too few to "
            f"tell it from chance (it judges {MIN_JUDGED_EXAMPLES} or more): "
            "its figures are reported but nothing was checked; raise dataset.max_test_examples "
            "(or preflight.examples)")


def collapsed_predictions(model: nn.Module, data: ImageTensors, spec: PreflightSpec, *,
                          batch_size: int, device: torch.device, seed: int,
                          precision: str = "fp32") -> str | None:
    """A warning when θ_AT answers one class for most of the preflight's sample (the same
    seeded sample as :func:`preflight_check`), far more often than the labels hold it; else None.

    Inputs on another scale than training's (a checkpoint trained on normalised or [0, 255]
    inputs fed [0, 1] images) often push every input to one class. Such a model can pass the
    chance bar (measured: the digits θ_AT fed 255 × its inputs answered class 1 for 89 % of the
    test split and scored 24 %, over the bar of 22.5 %), and the run would then tune a model that
    never saw its inputs. A clean pass over the sample, no attack."""
    sample = _sample(data, spec.examples, seed)
    if len(sample) == 0:
        return None
    predictions = []
    with eval_mode(model), torch.no_grad():
        for images, _ in iterate_batches(sample, batch_size, device=device):
            with autocast(images.device, precision):
                predictions.append(model(images).argmax(1).cpu())
    answered = torch.bincount(torch.cat(predictions))
    top = int(answered.argmax())
    share = float(answered[top]) / len(sample)
    labels = torch.bincount(sample.labels.cpu(), minlength=top + 1)
    label_share = float(labels[top]) / len(sample)
    if share < COLLAPSE_SHARE or share < COLLAPSE_FACTOR * label_share:
        return None
    return (f"the checkpoint answers class {top} for {100 * share:.0f}% of {len(sample)} test "
            f"examples, which hold {100 * label_share:.0f}% of that class: inputs on another "
            "scale than in training often collapse the predictions so. Check "
            "architecture.normalization or architecture.mean/std (mean [0] and std [1/255] "
            "for a checkpoint trained on [0, 255] pixel values)")


def normalization_warning(model: nn.Module, data: ImageTensors, spec: PreflightSpec, *,
                          mean: Sequence[float] | None, std: Sequence[float] | None,
                          clean_accuracy: float, batch_size: int, device: torch.device,
                          seed: int, precision: str = "fp32") -> str | None:
    """A warning when θ_AT, which passed the preflight with ``clean_accuracy`` on its seeded
    sample (the same as :func:`preflight_check`'s), does clearly better there under another
    usual input normalisation than the configured ``mean``/``std``
    (:func:`rift.normalization_check.better_normalization`); else None."""
    finding = better_normalization(
        model, _sample(data, spec.examples, seed), mean=mean, std=std,
        configured_accuracy=clean_accuracy, batch_size=batch_size, device=device,
        precision=precision)
    return None if finding is None else finding.sentence()
