"""Settings that run but make the result hard to trust: each is a ``warning`` event, not an error.

:func:`configuration_warnings` is checked once per run, before any stage
(``rift.pipeline.run_preflight_stage``), and names the setting responsible:

* **A decision made on too few examples.** The α of the interpolation, the best fine-tuning epoch
  and the MRC table are measured on a split after its caps (``dataset.max_test_examples``,
  ``dataset.max_train_examples`` with ``dataset.validation_fraction``, ``evaluation.max_examples``,
  ``mrc.num_examples``). An accuracy on ``n`` examples moves in steps of 100/n points, so an
  accuracy-based choice (α, the best epoch) is flagged below :data:`MIN_ACCURACY_EXAMPLES`
  examples (one example would be worth more than one point, the scale of the differences the α
  rule and ``robust_tolerance`` work at) or below one example per class (some class is never
  seen). The MRC set is a loss over its examples, not a count of them, so it is flagged only below
  one example per class.
* **``precision: "bf16"`` on the CPU.** bf16 autocast is meant for GPUs: on most CPUs it is slower
  than fp32, and it changes the numbers (activations keep 8 significant bits).
* **``finetune.lr_milestones`` at or past ``finetune.epochs``.** A milestone ``m`` lowers the rate
  from epoch ``m + 1`` (the scheduler steps after each epoch), so one at or past the last epoch
  never acts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from rift.config import FinetuneSpec, RiftConfig
from rift.data import DatasetSplits
from rift.evaluation import evaluated_examples

#: Fewer examples than this and one example moves an accuracy by more than one percentage point.
MIN_ACCURACY_EXAMPLES = 100

Split = Literal["train", "validation", "test"]
_SPLIT_WORDS = {"train": "training", "validation": "validation", "test": "test"}


@dataclass(frozen=True)
class RunWarning:
    """One ``warning`` event: the stage it concerns ('run' for all of them) and what to know."""

    stage: str
    message: str

    def as_payload(self) -> dict[str, str]:
        return {"stage": self.stage, "message": self.message}


def configuration_warnings(config: RiftConfig, splits: DatasetSplits, device: torch.device
                           ) -> list[RunWarning]:
    """Every warning of the module docstring that applies to ``config`` on these loaded
    ``splits`` and the resolved ``device``, in stage order."""
    found: list[RunWarning] = []
    classes = splits.num_classes

    source: Split = "test" if config.mrc.split == "test" else "train"
    available = len(getattr(splits, source))
    count = min(config.mrc.num_examples, available)
    origin = (f"mrc.num_examples={config.mrc.num_examples}"
              if config.mrc.num_examples <= available
              else f"all of the {_SPLIT_WORDS[source]} split: {_origin(config, splits, source)}")
    if count < classes:
        found.append(RunWarning("mrc", (
            f"MRC scores modules on {count} adversarial examples ({origin}), fewer than the "
            f"{classes} classes: the table cannot see how every class reacts; use "
            f"mrc.num_examples >= {classes}")))

    if config.finetune.epochs > 1:  # one epoch is kept whatever its accuracy
        split: Split = config.finetune.selection_split
        too_few = _too_few(len(getattr(splits, split)), classes)
        if too_few is not None:
            found.append(RunWarning("finetune", (
                f"the best fine-tuning epoch is chosen on {len(getattr(splits, split))} "
                f"{_SPLIT_WORDS[split]} examples ({_origin(config, splits, split)}), "
                f"{too_few}")))
    found.extend(_milestone_warnings(config.finetune))

    split = config.interpolation.selection_split
    cap = config.evaluation.max_examples
    count = len(evaluated_examples(splits, split, cap))
    origin = (f"evaluation.max_examples={cap}" if count < len(getattr(splits, split))
              else _origin(config, splits, split))
    too_few = _too_few(count, classes)
    if too_few is not None:
        found.append(RunWarning("interpolate", (
            f"α is chosen on {count} {_SPLIT_WORDS[split]} examples ({origin}), {too_few}")))

    if config.precision == "bf16" and device.type == "cpu":
        found.append(RunWarning("run", (
            "precision 'bf16' on the CPU: bf16 autocast is slower than fp32 on most CPUs and "
            "changes the numbers (activations keep 8 significant bits); it is meant for GPUs, "
            "use precision 'fp32' on the CPU")))
    return found


def _too_few(count: int, classes: int) -> str | None:
    """Why accuracies on ``count`` examples are too coarse to choose by, or None."""
    if count >= max(classes, MIN_ACCURACY_EXAMPLES):
        return None
    floor = (f"the {classes} classes" if count < classes
             else f"{MIN_ACCURACY_EXAMPLES}")
    step = 100.0 / max(count, 1)
    return (f"fewer than {floor}: accuracies move in steps of {step:.3g} percentage points; "
            f"use at least {max(classes, MIN_ACCURACY_EXAMPLES)}")


def _origin(config: RiftConfig, splits: DatasetSplits, split: Split) -> str:
    """The setting that sized ``split``, as ``name=value``; the dataset when no cap did."""
    spec = config.dataset
    if split == "test":
        if spec.max_test_examples is not None and spec.max_test_examples == len(splits.test):
            return f"dataset.max_test_examples={spec.max_test_examples}"
        return f"the whole test split of dataset '{spec.name}'"
    pool = len(splits.train) + len(splits.validation)
    capped = spec.max_train_examples is not None and spec.max_train_examples == pool
    of_pool = (f"dataset.max_train_examples={spec.max_train_examples}" if capped
               else f"the {pool} training examples of dataset '{spec.name}'")
    if split == "validation":
        return f"dataset.validation_fraction={spec.validation_fraction:g} of {of_pool}"
    return f"{of_pool} less the validation split"


def _milestone_warnings(spec: FinetuneSpec) -> list[RunWarning]:
    # Only milestones other than the default: the default [5] with fewer than 6 epochs is the
    # usual quick run, where no decay is what is wanted. Whether the user wrote the milestones
    # cannot be told from model_fields_set: the service stores a job's config as a full dump, so
    # in the worker every field counts as set. An explicit [5] is thus as quiet as the default.
    default = FinetuneSpec.model_fields["lr_milestones"].get_default(call_default_factory=True)
    late = [m for m in spec.lr_milestones if m >= spec.epochs]
    if not late or spec.lr_milestones == default:
        return []
    return [RunWarning("finetune", (
        f"finetune.lr_milestones {late} never take effect: a milestone m lowers the learning "
        f"rate from epoch m + 1 and finetune.epochs is {spec.epochs}"))]
