"""The cost estimate: each stage's count follows its formula, and more work costs more."""

from __future__ import annotations

from typing import Any

import pytest

from persistence.cost import (
    BACKWARD_FLOPS_FACTOR,
    BUILTIN_SIZES,
    PREFLIGHT_NORMALIZATION_PASSES,
    estimate_cost,
    sweep_size,
)
from rift.config import RiftConfig


def _config(**sections: Any) -> dict[str, Any]:
    body = {"architecture": {"name": "small_cnn"}, "dataset": {"name": "digits"}, **sections}
    return RiftConfig.model_validate(body).model_dump(mode="json")


def test_stage_formulas() -> None:
    config = _config(attack={"steps": 3}, mrc={"steps": 2, "num_examples": 100},
                     finetune={"epochs": 4}, interpolation={"alpha_step": 0.5},
                     dataset={"name": "digits", "validation_fraction": 0.25})
    cost = estimate_cost(config, num_modules=5)
    assert (cost.adversarial_set.forward, cost.adversarial_set.backward) == (400, 300)
    assert (cost.mrc.forward, cost.mrc.backward) == (100 + 5 * 400, 5 * 200)
    train, test = BUILTIN_SIZES["digits"]
    validation = -(-train // 4)
    assert (cost.finetune.forward, cost.finetune.backward) == (4 * train, 4 * (train - validation))
    assert (cost.interpolation.forward, cost.interpolation.backward) == (3 * test * 5,
                                                                       3 * test * 3)
    assert cost.total == sum(s["total"] for s in cost.to_json()["stages"].values())


def test_listed_modules_and_caps() -> None:
    listed = estimate_cost(_config(mrc={"modules": ["conv1", "fc"]}), num_modules=50)
    assert listed.mrc == estimate_cost(_config(), num_modules=2).mrc
    capped = estimate_cost(_config(dataset={"name": "digits", "max_train_examples": 10},
                                   evaluation={"max_examples": 7}), num_modules=1)
    assert capped.finetune.forward == 10 * 10 and capped.interpolation.forward == 21 * 7 * 12
    uploaded = estimate_cost(_config(dataset={"name": "npz", "path": "dataset:x"}),
                             num_modules=1, dataset_examples=(1000, 200))
    assert uploaded.finetune.forward == 10 * 1000


@pytest.mark.parametrize("change", [
    {"attack": {"steps": 20}}, {"mrc": {"steps": 20}}, {"mrc": {"num_examples": 2048}},
    {"finetune": {"epochs": 20}}, {"interpolation": {"alpha_step": 0.01}},
])
def test_more_work_costs_more(change: dict[str, Any]) -> None:
    assert estimate_cost(_config(**change), num_modules=8).total > \
        estimate_cost(_config(), num_modules=8).total


def test_a_sweep_counts_a_fine_tune_and_a_curve_per_candidate() -> None:
    one = estimate_cost(_config(), num_modules=5)
    sweep = _config(finetune={"candidates": 3, "lr_grid": [0.001, 0.01]})
    assert sweep_size(sweep) == 6
    assert sweep_size(sweep, num_modules=2) == 4  # no more modules than the model has
    assert sweep_size(_config(finetune={"module": "fc", "candidates": 3, "lr_grid": [0.1]})) == 1
    cost = estimate_cost(sweep, num_modules=5)
    assert (cost.adversarial_set, cost.mrc) == (one.adversarial_set, one.mrc)
    assert (cost.finetune.total, cost.interpolation.total) == (
        6 * one.finetune.total, 6 * one.interpolation.total)


def test_builtin_digits_size_is_the_librarys_split() -> None:
    # The estimate once assumed a fifth of the digits as test (359) where the library holds out
    # a quarter (449), under-counting every digits job's interpolation stage.
    from rift.data.loading import load_dataset

    spec = RiftConfig.model_validate(_config()).dataset
    splits = load_dataset(spec, seed=0)
    train = splits.train.labels.numel() + splits.validation.labels.numel()
    assert BUILTIN_SIZES["digits"] == (train, splits.test.labels.numel())


def test_the_splits_and_shards_a_job_really_runs_on_are_counted() -> None:
    # Before: the curve was counted on the test split whatever split it ran on (a validation
    # split of 45 % of CIFAR-10's pool is 22,500 examples, against a test split of 10,000), its
    # before/after on the test split not at all; fine-tuning with selection on the test split
    # was counted as training without the validation split and watching it; and each MRC
    # shard's reference pass was not counted.
    dataset = {"name": "cifar10", "validation_fraction": 0.45}
    base = _config(dataset=dataset, architecture={"name": "resnet18"},
                   interpolation={"alpha_step": 0.5})
    on_validation = _config(dataset=dataset, architecture={"name": "resnet18"},
                            interpolation={"alpha_step": 0.5, "selection_split": "validation"})
    steps = base["attack"]["steps"]
    assert estimate_cost(base, num_modules=8).interpolation.backward == 3 * 10_000 * steps
    assert estimate_cost(on_validation, num_modules=8).interpolation.backward == \
        (3 * 22_500 + 2 * 10_000) * steps
    capped = _config(dataset=dataset, architecture={"name": "resnet18"},
                     evaluation={"max_examples": 100},
                     interpolation={"alpha_step": 0.5, "selection_split": "validation"})
    assert estimate_cost(capped, num_modules=8).interpolation.backward == (3 * 100 + 2 * 100) * steps

    on_test = _config(dataset=dataset, architecture={"name": "resnet18"},
                      finetune={"selection_split": "test", "epochs": 2},
                      evaluation={"max_examples": 100})
    tune = estimate_cost(on_test, num_modules=8).finetune
    assert (tune.forward, tune.backward) == (2 * (50_000 + 10_000), 2 * 50_000)

    sharded = _config(mrc={"shards": 4, "num_examples": 100})
    one = estimate_cost(_config(mrc={"num_examples": 100}), num_modules=8).mrc
    assert estimate_cost(sharded, num_modules=8).mrc.forward == one.forward + 3 * 100
    assert estimate_cost(sharded, num_modules=2).mrc.forward == \
        estimate_cost(_config(mrc={"num_examples": 100}), num_modules=2).mrc.forward + 100


@pytest.mark.parametrize("step", [0.3, 0.6, 0.51, 0.07, 0.05, 0.01, 1.0])
def test_the_curve_counts_every_point_of_the_librarys_grid(step: float) -> None:
    # Before: floor(1 / step) + 1 points, one short whenever the step does not divide 1 (the
    # grid always ends with 1.0): alpha_step 0.6 attacks 3 points and was counted as 2.
    points = {0.3: 5, 0.6: 3, 0.51: 3, 0.07: 16, 0.05: 21, 0.01: 101, 1.0: 2}[step]
    cost = estimate_cost(_config(interpolation={"alpha_step": step}), num_modules=1)
    steps = _config()["attack"]["steps"]
    assert cost.interpolation.backward == points * BUILTIN_SIZES["digits"][1] * steps


def test_the_preflight_is_counted_on_the_examples_it_measures() -> None:
    """It measured up to 100,000 test examples (clean, attacked, its checks' passes) and was
    counted nowhere, so a job could pass ``max_job_cost`` by its preflight alone."""
    base = {"attack": {"steps": 3}, "dataset": {"name": "digits"}}
    skipped = estimate_cost(_config(**base, preflight={"examples": 0}), num_modules=4)
    sampled = estimate_cost(_config(**base, preflight={"examples": 100}), num_modules=4)
    whole = estimate_cost(_config(**base, preflight={"examples": 100_000}), num_modules=4)
    assert skipped.preflight.total == 0
    passes = 1 + 3 + 1 + 1 + PREFLIGHT_NORMALIZATION_PASSES
    assert (sampled.preflight.forward, sampled.preflight.backward) == (100 * passes, 100 * 3)
    _, test = BUILTIN_SIZES["digits"]  # never more than the test split holds
    assert (whole.preflight.forward, whole.preflight.backward) == (test * passes, test * 3)
    assert sampled.total - skipped.total == sampled.preflight.total
    assert sampled.to_json()["stages"]["preflight"]["total"] == sampled.preflight.total


def test_the_compute_estimate_weighs_each_pass_by_the_models_flops() -> None:
    """An example-pass of a ResNet-18 counted as one of small_cnn; the GFLOP figure weighs
    forward passes by the model's forward FLOPs F and backward ones by 2F."""
    config = _config(attack={"steps": 3}, mrc={"steps": 2, "num_examples": 100})
    unknown = estimate_cost(config, num_modules=5)
    assert unknown.gflop is None and unknown.to_json()["gflop"] is None
    flops = 5.6e6
    cost = estimate_cost(config, num_modules=5, example_flops=flops)
    stages = cost.to_json()["stages"].values()
    forward = sum(stage["forward"] for stage in stages)
    backward = sum(stage["backward"] for stage in stages)
    assert BACKWARD_FLOPS_FACTOR == 2
    assert cost.gflop == pytest.approx((forward * flops + backward * 2 * flops) / 1e9)
    assert cost.to_json()["gflop"] == cost.gflop
    assert cost.to_json()["example_gflop"] == pytest.approx(flops / 1e9)
    # The example-passes do not change with the model's size; the compute does, in proportion.
    bigger = estimate_cost(config, num_modules=5, example_flops=198 * flops)
    assert bigger.total == cost.total == unknown.total
    assert bigger.gflop == pytest.approx(198 * cost.gflop)
    # A count of 0 (nothing counted) is unknown, not free.
    assert estimate_cost(config, num_modules=5, example_flops=0.0).gflop is None
