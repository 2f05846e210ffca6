"""Tests of rift/mrc_shards.py and of a sharded MRC table: the merged shards equal one task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from rift import checkpoints
from rift.config import MRCSpec, RiftConfig
from rift.errors import ConfigError
from rift.mrc import merge_reports, module_robust_criticality, select_modules
from rift.mrc_shards import estimate_module_costs, partition_modules, plan_shards
from rift.pipeline import (
    MRCInputs,
    MRCStageResult,
    PipelineCallbacks,
    make_mrc_inputs,
    prepare_run,
    score_modules,
)


def test_partition_balances_cost_and_keeps_every_module_once() -> None:
    costs = {"a": 100.0, "b": 60.0, "c": 50.0, "d": 40.0, "e": 10.0}
    groups = partition_modules(costs, 2)
    assert sorted(name for group in groups for name in group) == sorted(costs)
    loads = sorted(sum(costs[n] for n in group) for group in groups)
    # Longest-processing-time-first stays within 4/3 of the best split (here 130 / 130).
    assert loads[-1] <= 4 / 3 * 130.0 and loads == [120.0, 140.0]
    assert partition_modules(costs, 9) == [[n] for n in costs]  # never an empty shard
    with pytest.raises(ConfigError):
        partition_modules(costs, 0)


def test_cost_estimate_falls_with_depth() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    costs = estimate_module_costs(model, torch.rand(2, 3, 4, 4), ["0", "2", "4"])
    assert costs["0"] > costs["2"] > costs["4"] > 0
    assert costs["4"] == 8 * 4 * 4 * 10  # the last module: only its own multiply-adds


def test_merged_shards_equal_the_single_task_table(digits_checkpoint_path: Path,
                                                    digits_job_config: dict[str, Any],
                                                    tmp_path: Path) -> None:
    digits_job_config["mrc"].update(steps=2, num_examples=96, batch_size=32)
    config = RiftConfig.model_validate(digits_job_config)
    run = prepare_run(config, digits_checkpoint_path)
    inputs = make_mrc_inputs(run)
    whole = score_modules(run, inputs)

    # The shards read the set back from a file, as the workers do through the object store.
    checkpoints.save_safetensors(tmp_path / "inputs.safetensors",
                                 {"adversarial": inputs.adversarial, "labels": inputs.labels})
    stored = checkpoints.load_state_dict(tmp_path / "inputs.safetensors")
    shared = MRCInputs(stored["adversarial"], stored["labels"])
    names = select_modules(run.model, config.mrc)
    groups = partition_modules(estimate_module_costs(run.model, shared.adversarial, names), 2)
    assert len(groups) == 2
    events: list[dict[str, Any]] = []
    callbacks = PipelineCallbacks(on_event=lambda kind, payload: events.append(payload)
                                  if kind == "module_scored" else None)
    parts = [MRCStageResult.from_json(score_modules(run, shared, group, callbacks).to_json())
             for group in reversed(groups)]  # finishing order must not matter
    merged = MRCStageResult.merge(parts, names)
    # A shard's rows say their place in the whole table (a reader of the events orders the
    # rows scored so far by it), not the table's size, which a shard does not know.
    assert {p["name"]: p["order"] for p in events} == {
        row["name"]: i for i, row in enumerate(merged.rows)}
    assert not any("modules_total" in p for p in events)

    def without_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert without_time(merged.rows) == without_time(whole.rows)
    assert merged.selected_module == whole.selected_module
    assert merged.baseline_robust_loss == whole.baseline_robust_loss


@pytest.mark.parametrize("shards", [1, 2, 4, 5, 9])
def test_every_planned_shard_scores_and_merges_to_the_single_task_table(shards: int) -> None:
    """OddLayers' ``aux`` head is never called in eval mode: the one-task table leaves it out
    with a warning. Planned among the shards (cost 1, so alone in a shard once there are as many
    shards as modules), its shard raised "no selected module affects the model's output" and
    failed the job; now no shard is given it, and the merge equals the one-task table for any
    shard count, more shards than modules included."""
    from tests.module_factories import OddLayers

    torch.manual_seed(0)
    model = OddLayers().eval()
    images, labels = torch.rand(12, 3, 8, 8), torch.randint(0, 4, (12,))
    spec = MRCSpec(steps=2, batch_size=6, shards=shards)
    whole = module_robust_criticality(model, images, labels, spec)
    assert whole.unreachable == ["aux"]

    plan = plan_shards(model, spec, images)
    # What each shard task does with its group (it raised for a group of only "aux").
    parts = [module_robust_criticality(model, images, labels, spec.model_copy(
        update={"modules": group})) for group in plan.groups]
    assert plan.unreachable == ["aux"]
    assert sorted(name for group in plan.groups for name in group) == sorted(
        row.name for row in whole.modules)
    assert len(plan.groups) == min(shards, len(whole.modules)) and all(plan.groups)
    merged = merge_reports(parts, select_modules(model, spec))
    assert [row.as_dict() | {"seconds": 0} for row in merged.modules] == [
        row.as_dict() | {"seconds": 0} for row in whole.modules]
    assert merged.lowest().name == whole.lowest().name


def test_a_plan_with_no_module_the_output_depends_on_names_them() -> None:
    from tests.module_factories import OddLayers

    with pytest.raises(ConfigError, match="aux") as info:
        plan_shards(OddLayers().eval(), MRCSpec(modules=["aux"], shards=2),
                    torch.rand(2, 3, 8, 8))
    assert info.value.field == "mrc.modules"


@pytest.mark.parametrize("settings", [{}, {"table": "selection"}, {"module_batch": 2}])
def test_an_error_scoring_a_module_names_it(settings: dict[str, Any]) -> None:
    """The model's own error keeps its type (the worker retries it) and gains a note naming the
    module, in each way of scoring (one at a time, selection, stacked groups); the worker's job
    message shows it (tests/worker/test_shard_failures.py)."""
    from tests.module_factories import BadModuleNet

    torch.manual_seed(0)
    model = BadModuleNet().eval()
    with pytest.raises(RuntimeError, match="differs from the checkpoint") as info:
        module_robust_criticality(model, torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,)),
                                  MRCSpec(steps=1, batch_size=8, **settings))
    assert info.value.__notes__ == ["while scoring MRC module(s) bad"]
