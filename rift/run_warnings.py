"""Settings that run but make the result hard to trust: each is a ``warning`` event, not an error.
(:class:`RunWarning` is also the payload of what a stage finds while it runs, e.g. a fine-tune
that diverged and kept an earlier epoch, ``rift.pipeline``.)

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
* **An attack weaker than its ``eps``.** ``attack.steps: 0`` or ``attack.eps: 0`` takes no step
  (robust accuracy is that of the clean inputs: no random start is drawn either); ``steps × step_size < eps``
  cannot reach the edge of the ball from the clean input. Either way the "robust" figures the α
  rule compares are not those of the radius the job names.
* **Classes a split lacks.** The split α is chosen on (after its caps) lacking classes the data
  uses, or holding one class only (an accuracy there says nothing of the others; heavy imbalance
  and a test file of one class end here), and a training split lacking classes the test split
  holds (fine-tuning never sees them); data of one class. The α split is checked only with at
  least as many examples as classes: fewer is already the warning above.
* **A head wider than the data's classes** (``architecture.num_classes`` 1000 on 10 classes):
  the model's extra outputs are classes no example holds. Accuracies count a prediction of one
  as an error, and attacks, MRC and fine-tuning push inputs and weights toward them, so the
  numbers are those of a 1000-way problem scored on 10 classes. Right for a 1000-class model
  meant to be judged on a subset; wrong for a checkpoint trained on the 10 classes, whose head
  has 10 outputs (a head narrower than the labels is an error in ``prepare_run``).
* **α chosen on examples θ_FT trained on.** ``finetune.selection_split: "test"`` trains on the
  training and validation splits together (``rift.pipeline.finetune_splits``), so with
  ``interpolation.selection_split: "validation"`` the α curve is measured on θ_FT's own training
  examples: its clean accuracy there grows with α for memorisation, not generalisation, and the
  rule leans to larger α than held-out data would pick.
* **A radius off the features' scale** (``rift.feature_scale``): on feature vectors, an
  ``attack.eps`` below 1/255 of the features' typical range (0–255 pixel values saved as
  features and attacked with an image radius such as 8/255) attacks nothing; features that all
  lie in [0, 1] under ``attack.domain: "auto"`` (unbounded for feature vectors) are pushed past
  0 and 1, where the same values as images are kept in the box; on images (read in [0, 1]), an
  ``attack.domain`` reaching past 0 or 1 (bounds in normalised units, ``"none"``)
  (``rift.inputs_in_domain.image_domain_problem``).
* **Class folders named by numbers.** ImageFolder classes are the folders in text order (as
  torchvision's): folders ``1`` to ``10`` give class 1 to folder ``10``, not ``2``. A checkpoint
  trained with the numeric order would see every label but the first moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from rift.config import AttackSpec, FinetuneSpec, RiftConfig
from rift.data import DatasetSplits
from rift.evaluation import evaluated_examples
from rift.feature_scale import feature_scale_problem, unbounded_unit_features
from rift.inputs_in_domain import image_domain_problem

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
    found.extend(_head_width_warnings(config.architecture.num_classes, classes))

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

    found.extend(_class_warnings(splits, split, evaluated_examples(splits, split, cap).labels))
    if split == "validation" and config.finetune.selection_split == "test":
        found.append(RunWarning("interpolate", (
            "α is chosen on the validation split (interpolation.selection_split 'validation'), "
            "which the fine-tuning trained on (finetune.selection_split 'test' trains on the "
            "training and validation splits together and picks its epoch on the test split): "
            "the curve's clean accuracy is measured on θ_FT's own training examples and favours "
            "larger α; set finetune.selection_split 'validation', or choose α on the test split")))
    found.extend(_numbered_folder_warnings(splits.class_names))
    found.extend(_attack_warnings(config.attack))
    if not splits.feature_vectors:  # images are read in [0, 1]
        outside = image_domain_problem(config.attack)
        if outside is not None:
            found.append(RunWarning("run", outside))
    if splits.feature_vectors:  # eps in the features' own units
        scale = feature_scale_problem(config.attack, splits.train.images)
        if scale is not None:
            found.append(RunWarning("run", scale))
        unbounded = unbounded_unit_features(config.attack, splits.train.images)
        if unbounded is not None:
            found.append(RunWarning("run", unbounded))

    if config.precision == "bf16" and device.type == "cpu":
        found.append(RunWarning("run", (
            "precision 'bf16' on the CPU: bf16 autocast is slower than fp32 on most CPUs and "
            "changes the numbers (activations keep 8 significant bits); it is meant for GPUs, "
            "use precision 'fp32' on the CPU")))
    return found


def _head_width_warnings(outputs: int, classes: int) -> list[RunWarning]:
    if outputs <= classes:
        return []
    extra = outputs - classes
    others = f"{extra} outputs are classes" if extra > 1 else "output is a class"
    return [RunWarning("run", (
        f"architecture.num_classes is {outputs} but the data has {classes} classes (labels 0 "
        f"to {classes - 1}): the model's other {others} no example holds. "
        "A prediction of one counts as an error, and attacks, MRC and fine-tuning push toward "
        f"them, so every figure is that of a {outputs}-way classifier scored on {classes} "
        f"classes. Right for a {outputs}-class model judged on a subset of its classes; for a "
        f"checkpoint trained on these {classes} classes set architecture.num_classes to "
        f"{classes}"))]


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


def _labels_text(labels: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(label) for label in labels[:limit])
    return shown + (f", … ({len(labels)} in all)" if len(labels) > limit else "")


def _class_warnings(splits: DatasetSplits, split: Split, chosen_on: torch.Tensor
                    ) -> list[RunWarning]:
    """Classes missing from the α split's evaluated examples ``chosen_on`` (labels) or from
    the training split (see the module docstring)."""
    parts = (splits.train, splits.validation, splits.test)
    used = set(torch.cat([part.labels.cpu() for part in parts]).unique().tolist())
    found: list[RunWarning] = []
    present = set(chosen_on.cpu().unique().tolist())
    words = _SPLIT_WORDS[split]
    if len(used) == 1:
        found.append(RunWarning("run", (
            f"every example of the data is of class {next(iter(used))}: accuracies are those "
            "of one class, and a model answering it for every input scores 100 %")))
    elif len(chosen_on) >= len(used) and present != used:
        what = (f"all of class {next(iter(present))}" if len(present) == 1
                else f"none of class(es) {_labels_text(sorted(used - present))}")
        found.append(RunWarning("interpolate", (
            f"α is chosen on {len(chosen_on)} {words} examples, {what}, of the {len(used)} "
            "classes the data uses: the accuracies α is chosen by say nothing of the others")))
    unseen = sorted(set(splits.test.labels.cpu().unique().tolist())
                    - set(splits.train.labels.cpu().unique().tolist()))
    if unseen:
        found.append(RunWarning("finetune", (
            f"the training split has no example of class(es) {_labels_text(unseen)}, which the "
            "test split holds: fine-tuning never sees them")))
    return found


def _attack_warnings(spec: AttackSpec) -> list[RunWarning]:
    if spec.steps == 0 or spec.eps == 0:
        setting = "attack.steps is 0" if spec.steps == 0 else "attack.eps is 0"
        # PGD returns the clean inputs then, random start or not (rift.attacks.PGD.perturb):
        # the message said "plus uniform noise" for steps 0 with a random start, which no
        # evaluation added.
        return [RunWarning("run", (
            f"{setting}: the attack takes no step, so every robust accuracy of the run is the "
            "accuracy on clean inputs, and MRC and the α rule judge no attack"))]
    reach = spec.steps * spec.step_size
    if reach < spec.eps:
        return [RunWarning("run", (
            f"attack.steps × attack.step_size = {spec.steps} × {spec.step_size:.4g} = "
            f"{reach:.4g} is less than attack.eps {spec.eps:.4g}: PGD cannot reach the edge of "
            "its ball from the clean input, so robust accuracy is that of a weaker attack than "
            f"eps says; use step_size >= eps / steps = {spec.eps / spec.steps:.4g} "
            "(2.5 · eps / steps is usual)"))]
    return []


def _numbered_folder_warnings(names: tuple[str, ...] | None) -> list[RunWarning]:
    if not names or not all(name.isdigit() for name in names):
        return []
    numeric = sorted(names, key=int)
    if list(names) == numeric:
        return []
    shown = ", ".join(f"{index} is '{name}'" for index, name in enumerate(names[:4]))
    return [RunWarning("run", (
        f"the class folders are numbers, taken in text order as classes are: class {shown}"
        f"{', …' if len(names) > 4 else ''}; a checkpoint trained with them in numeric order "
        f"('{numeric[1]}' as class 1) sees other labels: rename them with leading zeros "
        f"({', '.join(name.zfill(len(max(names, key=len))) for name in numeric[:3])}, …) "
        "so that both orders agree"))]
