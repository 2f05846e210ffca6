"""A stage taken over midway (its worker stopped or lost) resumes exactly from what an earlier
attempt stored. MRC: the rows stored are taken (``done`` of ``module_robust_criticality``) and the
table is the uninterrupted one exactly: each module is scored alone from the same inputs and seed
(its batch orders drawn from a generator seeded alike), every weight restored after it, so a row
does not depend on which modules ran before it in the process. Interpolation with ``curve:
"full"``: the α points' stored robust counts (``alpha_evaluated``) are taken, the same curve and
α result."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from rift.config import MRCSpec, RiftConfig
from rift.demo_tabular import make_tabular_checkpoint, tabular_demo_config, write_breast_cancer_npz
from rift.mrc import (
    ModuleCriticality,
    module_robust_criticality,
    mrc_inputs_digest,
    row_from_dict,
)
from rift.pipeline import (
    PipelineCallbacks,
    PreparedRun,
    prepare_run,
    run_finetune_stage,
    run_interpolation_stage,
)
from tests.rift.test_mrc_stacked import _conv_chain, _data


def _spec(**overrides: object) -> MRCSpec:
    values: dict[str, object] = {"steps": 3, "batch_size": 8, "num_examples": 24, "eps": 0.3,
                                 "lr": 0.3, "reshuffle": True}
    values.update(overrides)
    return MRCSpec(**values)


def _timeless(rows: list[ModuleCriticality]) -> list[ModuleCriticality]:
    return [dataclasses.replace(row, seconds=0.0) for row in rows]


def test_rows_stored_by_an_earlier_attempt_are_taken_and_the_table_is_the_same() -> None:
    images, labels = _data()
    whole = module_robust_criticality(_conv_chain(), images, labels, _spec(), seed=7)
    assert len(whole.modules) == 5 and whole.reused == []
    # What a stopped attempt stored (through JSON, as events are), in another process state:
    # the resumed run starts with its second and fourth module done.
    stored = {row.name: row_from_dict(row.as_dict()) for row in whole.modules[1:4:2]}
    assert all(row is not None for row in stored.values())
    torch.manual_seed(12345)  # a global RNG moved elsewhere changes nothing
    scored: list[tuple[str, int]] = []
    resumed = module_robust_criticality(
        _conv_chain(), images, labels, _spec(), seed=7,
        done={name: row for name, row in stored.items() if row is not None},
        on_module=lambda row, index, total: scored.append((row.name, index)))
    names = [row.name for row in whole.modules]
    assert resumed.reused == [names[1], names[3]]
    assert scored == [(names[0], 2), (names[2], 3), (names[4], 4)]  # only the missing ones
    assert _timeless(resumed.modules) == _timeless(whole.modules)
    assert resumed.lowest().name == whole.lowest().name


def test_with_module_groups_only_whole_leading_groups_are_taken() -> None:
    images, labels = _data()
    whole = module_robust_criticality(_conv_chain(), images, labels, _spec(module_batch=2))
    names = [row.name for row in whole.modules]
    # Three leading rows stored: the third's group was not whole, so it is scored again.
    resumed = module_robust_criticality(
        _conv_chain(), images, labels, _spec(module_batch=2),
        done={row.name: row for row in whole.modules[:3]})
    assert resumed.reused == names[:2]
    assert _timeless(resumed.modules) == _timeless(whole.modules)


def test_selection_table_and_bounds_are_never_taken() -> None:
    images, labels = _data()
    whole = module_robust_criticality(_conv_chain(), images, labels, _spec())
    done = {row.name: row for row in whole.modules}
    selection = module_robust_criticality(_conv_chain(), images, labels,
                                          _spec(table="selection"), done=done)
    assert selection.reused == []
    bound = {name: dataclasses.replace(row, exact=False) for name, row in done.items()}
    assert module_robust_criticality(_conv_chain(), images, labels, _spec(),
                                     done=bound).reused == []


def test_the_inputs_digest_changes_with_what_a_row_is_computed_from() -> None:
    images, labels = _data()
    base = mrc_inputs_digest(images, labels, _spec(), seed=0, precision="fp32")
    assert base == mrc_inputs_digest(images.clone(), labels.clone(), _spec(), seed=0,
                                     precision="fp32")
    # Which modules a shard or a filter picks does not change a row.
    assert base == mrc_inputs_digest(images, labels, _spec(modules=["convs.0"], shards=2),
                                     seed=0, precision="fp32")
    nudged = images.clone()
    nudged[3, 1, 2, 2] = torch.nextafter(nudged[3, 1, 2, 2], torch.tensor(2.0))
    others = {
        mrc_inputs_digest(nudged, labels, _spec(), seed=0, precision="fp32"),
        mrc_inputs_digest(images, labels.flip(0), _spec(), seed=0, precision="fp32"),
        mrc_inputs_digest(images, labels, _spec(steps=4), seed=0, precision="fp32"),
        mrc_inputs_digest(images, labels, _spec(), seed=1, precision="fp32"),
        mrc_inputs_digest(images, labels, _spec(), seed=0, precision="bf16"),
    }
    assert len(others) == 5 and base not in others


def test_a_stored_row_missing_a_field_is_not_taken() -> None:
    row = ModuleCriticality("conv", 10, 0.5, 2.0, 50.0, 10.0, 1.0, 2.1, 3, True).as_dict()
    assert row_from_dict(row) == ModuleCriticality(**row)  # type: ignore[arg-type]
    assert row_from_dict({**row, "mrc": 1}) is not None  # a whole number read back as an int
    for broken in ({k: v for k, v in row.items() if k != "passes"}, {**row, "mrc": "0.5"},
                   {**row, "exact": 1}, {**row, "parameters": True}):
        assert row_from_dict(broken) is None


def _tabular_run(tmp_path: Path, curve: str = "full") -> tuple[PreparedRun, dict[str, torch.Tensor]]:
    npz = write_breast_cancer_npz(tmp_path / "bc.npz")
    make_tabular_checkpoint(tmp_path / "ck.safetensors", npz, epochs=3)
    raw = tabular_demo_config(npz)
    raw["finetune"].update(epochs=3, lr=0.2, lr_milestones=[], module="layers.1")
    raw["interpolation"].update(alpha_step=0.125, curve=curve)
    raw["preflight"] = {"examples": 0}
    run = prepare_run(RiftConfig.model_validate(raw), tmp_path / "ck.safetensors")
    return run, dict(run_finetune_stage(run, "layers.1").state_dict)


def _interpolate(run: PreparedRun, finetuned: dict[str, torch.Tensor],
                 stored: list[dict[str, Any]]) -> tuple[Any, list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    callbacks = PipelineCallbacks(
        on_event=lambda kind, payload: events.append((kind, payload)),
        stored_events=lambda kind, inputs: [p for p in stored if p.get("inputs") == inputs]
        if kind == "alpha_evaluated" else [])
    return run_interpolation_stage(run, finetuned, callbacks), events


def test_alpha_points_stored_by_an_earlier_attempt_are_taken_and_the_curve_is_the_same(
        tmp_path: Path) -> None:
    run, finetuned = _tabular_run(tmp_path)
    whole, events = _interpolate(run, finetuned, [])
    evaluated = [p for kind, p in events if kind == "alpha_evaluated"]
    assert [p["alpha"] for p in evaluated] == [i / 8 for i in range(9)]
    # A stopped attempt had stored α = 0 (always attacked again), 0.25 and 0.75.
    stored = [evaluated[0], evaluated[2], evaluated[6]]
    resumed, events = _interpolate(run, finetuned, stored)
    assert [p["alpha"] for kind, p in events if kind == "alpha_evaluated"] == [
        0.0, 0.125, 0.375, 0.5, 0.625, 0.875, 1.0]
    assert [p for kind, p in events if kind == "interpolation_resumed"] == [
        {"alphas": [0.25, 0.75], "inputs": stored[0]["inputs"]}]
    assert resumed.points == whole.points
    assert resumed.chosen_alpha == whole.chosen_alpha
    assert (resumed.robust_evaluations, resumed.attacked_examples, resumed.gradient_steps) == (
        whole.robust_evaluations, whole.attacked_examples, whole.gradient_steps)
    assert all(torch.equal(resumed.state_dict[k], v) for k, v in whole.state_dict.items())
    # Counts stored for other weights (another θ_FT) are not taken.
    nudged = {k: v + 1e-3 if k.startswith("layers.1") and v.is_floating_point() else v
              for k, v in finetuned.items()}
    _, events = _interpolate(run, nudged, stored)
    assert not [p for kind, p in events if kind == "interpolation_resumed"]


def test_a_selection_curve_takes_no_stored_point(tmp_path: Path) -> None:
    run, finetuned = _tabular_run(tmp_path, curve="selection")
    _, events = _interpolate(run, finetuned, [])
    assert not [p for kind, p in events if kind in ("alpha_evaluated", "interpolation_resumed")]
