"""A job's cost estimate from its spec alone (no torch, no data): example-passes per stage.

One example-pass is one example through the model once, forward or backward; a training step on a
batch of ``b`` examples costs ``b`` forward plus ``b`` backward example-passes. The estimate
counts what docs/algorithm.md describes, as upper bounds where the spec leaves a choice open:

- ``preflight``: θ_AT measured on ``preflight.examples`` test examples (at most the test
  split's) before any stage: a clean pass, an attack and a pass on its images, one clean pass
  for the collapsed-predictions check and one per input normalisation the comparison may try
  (:data:`PREFLIGHT_NORMALIZATION_PASSES`); nothing with ``preflight.examples`` 0.
- ``adversarial_set``: ``mrc.num_examples`` examples, each attacked with ``attack.steps`` PGD
  steps (a forward and a backward each) plus one forward pass to take the clean loss.
- ``mrc``: for each candidate module, ``mrc.steps`` ascent passes over the adversarial set
  (forward and backward) plus one forward pass after each to measure the robust loss, and one
  forward pass for the reference loss.
- ``finetune``: ``finetune.epochs`` epochs over the training examples (forward and backward), and
  a clean forward pass over the validation split after each epoch.
- ``interpolation``: at each α, a clean forward pass over the test examples, and an attack
  (``attack.steps`` forward+backward, plus a forward) on them; with ``selection_split``
  ``validation``, the curve's examples are the validation split's, and the test split is
  measured twice more (before and after).
- ``mrc.shards``: each shard measures the reference loss once more; ``finetune.selection_split``
  ``test`` fine-tunes on the validation split too and measures the whole test split each epoch.
- a sweep (``finetune.candidates`` > 1 or ``finetune.lr_grid``) fine-tunes and interpolates once
  per (module, lr) candidate: ``finetune`` and ``interpolation`` count :func:`sweep_size` times.

The number of candidate modules is an upper bound given by the caller (the checkpoint's tensor
count: every module holds at least one tensor), unless ``mrc.modules`` lists them.

An example-pass of a ResNet-50 is not one of ``small_cnn``: with the model's forward FLOPs on one
example (counted by the fit check at job creation, ``validator/fit.py``), the estimate also
gives the job's compute in GFLOP (:attr:`CostEstimate.gflop`), which ``max_job_gflop`` bounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rift.alpha_grid import alpha_grid
from rift.config import NAMED_NORMALIZATIONS

#: Clean passes over the preflight's sample that the normalisation comparison may make
#: (``rift.normalization_check``): none, each named normalisation, the [0, 255] scale and the
#: sample's own statistics (an upper bound: only those with the data's channel count run).
PREFLIGHT_NORMALIZATION_PASSES = len(NAMED_NORMALIZATIONS) + 3

#: Training / test examples of the built-in datasets (before ``max_*_examples`` caps). digits:
#: scikit-learn's 1797 images, a quarter held out as test (``rift.data.digits.TEST_FRACTION``; the
#: library's split sizes are checked in tests/persistence/test_cost.py, this module imports no torch).
BUILTIN_SIZES: dict[str, tuple[int, int]] = {
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "svhn": (73_257, 26_032),
    "mnist": (60_000, 10_000),
    "digits": (1_348, 449),
}


@dataclass(frozen=True)
class StageCost:
    forward: int
    backward: int

    @property
    def total(self) -> int:
        return self.forward + self.backward


#: A backward example-pass counted as this many forward ones in FLOPs: backpropagating through
#: a convolution or a matrix product takes two products of the forward's size (the gradient with
#: respect to its input and the one with respect to its weights), as ``torch.utils.flop_counter``
#: counts them (a ResNet-18 at 32×32: 2.0× its forward count with the weights' gradients). An
#: attack's backward needs the input's gradient only (1.0× there), so this is an upper bound.
BACKWARD_FLOPS_FACTOR = 2


@dataclass(frozen=True)
class CostEstimate:
    """Example-passes per stage; ``total`` is what ``max_job_cost`` is compared with.
    ``example_flops``: the model's forward FLOPs on one example (None: unknown), which makes
    ``gflop`` the one ``max_job_gflop`` is compared with."""

    adversarial_set: StageCost
    mrc: StageCost
    finetune: StageCost
    interpolation: StageCost
    preflight: StageCost = StageCost(0, 0)
    example_flops: float | None = None

    def _parts(self) -> tuple[tuple[str, StageCost], ...]:
        return (("preflight", self.preflight), ("adversarial_set", self.adversarial_set),
                ("mrc", self.mrc), ("finetune", self.finetune),
                ("interpolation", self.interpolation))

    @property
    def total(self) -> int:
        return sum(s.total for _, s in self._parts())

    @property
    def gflop(self) -> float | None:
        """The job's compute in GFLOP: forward example-passes × F plus backward ones × 2F (see
        :data:`BACKWARD_FLOPS_FACTOR`), F the forward FLOPs of one example; None when unknown."""
        if self.example_flops is None:
            return None
        forward = sum(s.forward for _, s in self._parts())
        backward = sum(s.backward for _, s in self._parts())
        return (forward + BACKWARD_FLOPS_FACTOR * backward) * self.example_flops / 1e9

    def to_json(self) -> dict[str, Any]:
        stages = {name: {"forward": s.forward, "backward": s.backward, "total": s.total}
                  for name, s in self._parts()}
        return {"unit": "example-passes", "total": self.total, "stages": stages,
                "gflop": self.gflop,
                "example_gflop": (None if self.example_flops is None
                                  else self.example_flops / 1e9)}


def _int(section: Mapping[str, Any], key: str, default: int) -> int:
    value = section.get(key)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _cap(count: int, cap: Any) -> int:
    return min(count, int(cap)) if isinstance(cap, int) and not isinstance(cap, bool) else count


def sweep_size(config: Mapping[str, Any], num_modules: int | None = None) -> int:
    """The (module, lr) candidates a job fine-tunes (1 without a sweep): ``finetune.candidates``
    modules (1 when ``finetune.module`` is named; at most ``num_modules`` when given), times the
    rates of ``finetune.lr_grid``; counted as ``rift.sweep.sweep_candidates`` lists them."""
    finetune = config.get("finetune")
    if not isinstance(finetune, Mapping):
        return 1
    modules = 1 if finetune.get("module") is not None else max(_int(finetune, "candidates", 1), 1)
    if num_modules is not None:
        modules = min(modules, max(num_modules, 1))
    grid = finetune.get("lr_grid")
    return modules * (len(grid) if isinstance(grid, list) and grid else 1)


def chosen_sweep_lr(metrics: Mapping[str, Any] | None) -> float | None:
    """The learning rate of a sweep's chosen candidate, as the pick records it in the job's
    ``metrics["sweep"]``; None for a one-candidate job (its rate is ``finetune.lr``) or before
    the pick."""
    sweep = (metrics or {}).get("sweep")
    lr = sweep.get("lr") if isinstance(sweep, Mapping) else None
    return float(lr) if isinstance(lr, int | float) and not isinstance(lr, bool) else None


def modules_bound(config: Mapping[str, Any], num_modules: int) -> int:
    """The modules MRC may measure, at most: ``mrc.modules``'s length when it lists them, else
    ``num_modules`` (the caller's bound, the checkpoint's tensor count)."""
    mrc = config.get("mrc")
    modules = mrc.get("modules") if isinstance(mrc, Mapping) else None
    return len(modules) if isinstance(modules, list) else max(num_modules, 0)


def estimate_cost(config: Mapping[str, Any], *, num_modules: int,
                  dataset_examples: tuple[int, int] | None = None,
                  example_flops: float | None = None) -> CostEstimate:
    """The cost of the job whose ``RiftConfig`` JSON is ``config``.

    Args:
        config: ``RiftConfig.model_dump(mode="json")`` (defaults filled in).
        num_modules: upper bound on the modules MRC measures (ignored when ``mrc.modules`` is set).
        dataset_examples: (train, test) examples of an uploaded dataset; built-in datasets are
            looked up in :data:`BUILTIN_SIZES`. Unknown sizes count as 0 for that stage.
        example_flops: the model's forward FLOPs on one example (the fit check's count); None:
            unknown, and the estimate has no ``gflop``.
    """
    attack = config.get("attack") or {}
    mrc = config.get("mrc") or {}
    finetune = config.get("finetune") or {}
    interpolation = config.get("interpolation") or {}
    evaluation = config.get("evaluation") or {}
    dataset = config.get("dataset") or {}

    pool, test_split = dataset_examples or BUILTIN_SIZES.get(str(dataset.get("name")), (0, 0))
    pool = _cap(pool, dataset.get("max_train_examples"))
    test_split = _cap(test_split, dataset.get("max_test_examples"))
    test = _cap(test_split, evaluation.get("max_examples"))
    validation_fraction = float(dataset.get("validation_fraction") or 0.1)
    validation = math.ceil(pool * validation_fraction)
    train = pool - validation

    steps = _int(attack, "steps", 10)
    preflight = config.get("preflight") or {}
    checked = min(max(_int(preflight, "examples", 256), 0), test_split)
    preflight_cost = StageCost(
        forward=checked * (1 + steps + 1 + 1 + PREFLIGHT_NORMALIZATION_PASSES),
        backward=checked * steps)
    examples = _int(mrc, "num_examples", 1024)
    adversarial = StageCost(forward=examples * (steps + 1), backward=examples * steps)

    count = modules_bound(config, num_modules)
    ascent = _int(mrc, "steps", 10)
    per_module = StageCost(forward=examples * 2 * ascent, backward=examples * ascent)
    mrc_cost = StageCost(forward=examples + count * per_module.forward,
                         backward=count * per_module.backward)

    # Each shard of a sharded MRC stage measures the reference loss again (one forward pass);
    # there are never more shards than modules.
    shards = min(max(_int(mrc, "shards", 1), 1), max(count, 1))
    mrc_cost = StageCost(forward=mrc_cost.forward + (shards - 1) * examples,
                         backward=mrc_cost.backward)

    runs = sweep_size(config, count)
    epochs = _int(finetune, "epochs", 10)
    # finetune.selection_split "test" trains on the whole pool, validation split included, and
    # measures the whole test split after each epoch (not capped by evaluation.max_examples).
    if finetune.get("selection_split") == "test":
        fitted, watched = pool, test_split
    else:
        fitted, watched = train, validation
    tune = StageCost(forward=runs * epochs * (fitted + watched), backward=runs * epochs * fitted)

    # The library's own grid: floor(1 / step) + 1 missed the end point 1.0 whenever the step
    # does not divide 1 (0.3: 0, 0.3, 0.6, 0.9 and 1.0 are 5 points, not 4).
    alphas = len(alpha_grid(float(interpolation.get("alpha_step") or 0.05)))
    # The curve is measured on interpolation.selection_split; on the validation split (which
    # may be larger than the test split: up to half the pool), before and after are measured
    # on the test split besides, two more attacked evaluations.
    if interpolation.get("selection_split") == "validation":
        attacked = alphas * _cap(validation, evaluation.get("max_examples")) + 2 * test
    else:
        attacked = alphas * test
    interp = StageCost(forward=runs * attacked * (1 + steps + 1),
                       backward=runs * attacked * steps)
    return CostEstimate(adversarial_set=adversarial, mrc=mrc_cost, finetune=tune,
                        interpolation=interp, preflight=preflight_cost,
                        example_flops=example_flops if example_flops else None)
