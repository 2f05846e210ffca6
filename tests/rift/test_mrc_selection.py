"""``mrc.table = "selection"`` (rift/mrc_selection.py): the full table's chosen module(s), with
fewer ascent passes; exact rows equal to the full table's, stopped rows flagged as lower bounds."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from rift.config import MRCSpec, RiftConfig
from rift.mrc import lowest_rows, module_robust_criticality, select_modules, selection_key
from rift.mrc_selection import run_selection
from rift.mrc_shards import estimate_module_costs, partition_modules
from rift.pipeline import MRCStageResult, make_mrc_inputs, mrc_table_csv, prepare_run, score_modules
from rift.sweep import candidates_from_mrc

# --------------------------------------------------------------------------- the scheduler alone


def _full_rows(losses: list[list[float]], baseline: float, allow_negative: bool
               ) -> list[dict[str, Any]]:
    """The rows an ascent measuring ``losses[i][j]`` after pass j of module i ends with."""
    rows = []
    for index, sequence in enumerate(losses):
        reached = max(sequence)
        worst = reached if allow_negative else max(baseline, reached)
        rows.append({"name": f"m{index}", "mrc": worst - baseline, "max_ascent_loss": reached,
                     "exact": True, "passes": len(sequence)})
    return rows


def _selection_rows(losses: list[list[float]], baseline: float, allow_negative: bool, keep: int,
                    screen: int) -> tuple[list[dict[str, Any]], list[int]]:
    """The same modules under the scheduler: each pass reveals the next made-up loss."""
    steps = len(losses[0])
    done = [0] * len(losses)
    finished: dict[int, bool] = {}
    paused: set[int] = set()

    def key(index: int) -> tuple[float, float]:
        row = _full_rows([losses[index][:done[index]]], baseline, allow_negative)[0]
        return selection_key(row["mrc"], row["max_ascent_loss"])

    def advance(index: int) -> tuple[float, float]:
        assert index not in finished and done[index] < steps
        paused.discard(index)
        done[index] += 1
        return key(index)

    def finish(index: int, exact: bool) -> None:
        assert index not in finished  # once per module
        finished[index] = exact

    passes = run_selection(len(losses), steps=steps, keep=keep, advance=advance,
                           pause=paused.add, finish=finish, screen=screen)
    assert passes == done and sorted(finished) == list(range(len(losses)))
    rows = _full_rows([losses[i][:done[i]] for i in range(len(losses))], baseline, allow_negative)
    for index, row in enumerate(rows):
        row["exact"] = finished[index]
        assert finished[index] == (done[index] == steps)  # exact rows ran every pass
    return rows, passes


@pytest.mark.parametrize("allow_negative", [False, True])
def test_the_scheduler_picks_the_full_tables_modules_on_random_loss_sequences(
        allow_negative: bool) -> None:
    generator = random.Random(0)
    saved = 0
    for _ in range(300):
        modules, steps = generator.randint(1, 8), generator.randint(1, 6)
        # A few levels only, so that ties (between modules and across passes) are common.
        levels = [round(generator.uniform(-1.0, 1.0), 1) for _ in range(4)]
        losses = [[generator.choice(levels) for _ in range(steps)] for _ in range(modules)]
        baseline = generator.choice([-0.5, 0.0, 0.2])
        for keep in (1, 2, 3):
            for screen in (1, 2):
                full = _full_rows(losses, baseline, allow_negative)
                rows, passes = _selection_rows(losses, baseline, allow_negative, keep, screen)
                assert lowest_rows(rows, keep) == lowest_rows(full, keep)
                assert all(p <= steps for p in passes)
                for got, want in zip(rows, full, strict=True):
                    if got["exact"]:
                        assert got == want
                    else:  # a lower bound, in the selection rule's order too
                        assert got["mrc"] <= want["mrc"]
                        assert got["max_ascent_loss"] <= want["max_ascent_loss"]
                saved += modules * steps - sum(passes)
    assert saved > 0  # it does stop modules early


def test_a_required_module_always_completes() -> None:
    losses = [[0.1, 0.1], [5.0, 6.0], [0.2, 0.2]]
    done = [0, 0, 0]

    def advance(index: int) -> tuple[float, float]:
        done[index] += 1
        value = max(losses[index][:done[index]])
        return (value, value)

    exact: dict[int, bool] = {}
    run_selection(3, steps=2, keep=1, advance=advance, pause=lambda i: None,
                  finish=exact.__setitem__, required={1})
    assert exact == {0: True, 1: True, 2: False}


def test_the_rule_refuses_to_choose_a_lower_bound() -> None:
    rows = [{"name": "a", "mrc": 0.5, "max_ascent_loss": 1.0, "exact": True},
            {"name": "b", "mrc": 0.1, "max_ascent_loss": 1.0, "exact": False}]
    with pytest.raises(RuntimeError, match="lower bounds"):
        lowest_rows(rows, 1)
    with pytest.raises(RuntimeError):
        candidates_from_mrc(rows, k=1, module=None, lrs=[0.01])
    rows[1]["exact"] = None  # recorded before the flag existed: exact
    assert lowest_rows(rows, 1) == [1]


# --------------------------------------------------------------------------- real ascents


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()


def _same_choice(full: list[dict[str, Any]], selection: list[dict[str, Any]], keep: int,
                 steps: int, fewer: bool = True) -> None:
    """The selection table chooses the full table's modules; exact rows are equal to the full
    table's (bitwise, time aside); other rows are lower bounds that ran fewer passes (and,
    when ``fewer``, at least one did)."""
    assert lowest_rows(selection, keep) == lowest_rows(full, keep)
    for got, want in zip(selection, full, strict=True):
        assert want["exact"] and want["passes"] == steps
        if got["exact"]:
            assert {k: v for k, v in got.items() if k != "seconds"} == \
                {k: v for k, v in want.items() if k != "seconds"}
        else:
            assert got["passes"] < steps and got["mrc"] <= want["mrc"]
    total = sum(row["passes"] for row in selection)
    assert total < sum(row["passes"] for row in full) if fewer else total <= steps * len(full)


@pytest.mark.parametrize(("reshuffle", "batch_size", "allow_negative"),
                         [(False, 48, False), (False, 16, True), (True, 16, False)])
def test_a_random_cnn_selection_table_chooses_as_the_full_table(
        reshuffle: bool, batch_size: int, allow_negative: bool) -> None:
    model = _cnn(0)
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(48, 3, 8, 8, generator=generator)
    labels = torch.randint(0, 10, (48,), generator=generator)
    spec = MRCSpec(steps=4, batch_size=batch_size, eps=0.5, reshuffle=reshuffle,
                   allow_negative=allow_negative)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    full = module_robust_criticality(model, images, labels, spec, seed=3)
    scored: list[tuple[str, int, int]] = []
    selection = module_robust_criticality(
        model, images, labels, spec.model_copy(update={"table": "selection"}), seed=3,
        on_module=lambda row, index, total: scored.append((row.name, index, total)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    _same_choice([r.as_dict() for r in full.modules], [r.as_dict() for r in selection.modules],
                 1, 4)
    assert selection.lowest().name == full.lowest().name
    # on_module once per module, the index counting modules as they are final.
    assert sorted(name for name, _, _ in scored) == sorted(r.name for r in full.modules)
    assert [index for _, index, _ in scored] == list(range(5))
    assert {total for _, _, total in scored} == {5}


def test_explicit_module_batch_is_not_used_and_says_so() -> None:
    model = _cnn(1)
    images, labels = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))
    warnings: list[str] = []
    spec = MRCSpec(steps=2, batch_size=16, table="selection", module_batch=3)
    report = module_robust_criticality(model, images, labels, spec, on_warning=warnings.append)
    assert len(report.modules) == 5 and len(warnings) == 1 and "module_batch 3" in warnings[0]


@pytest.mark.parametrize("candidates", [1, 2])
def test_digits_selection_table_chooses_as_the_full_table(
        digits_checkpoint_path: Path, digits_job_config: dict[str, Any], candidates: int) -> None:
    digits_job_config["mrc"].update(steps=4, num_examples=96, batch_size=32)
    digits_job_config["finetune"]["candidates"] = candidates
    config = RiftConfig.model_validate(digits_job_config)
    run = prepare_run(config, digits_checkpoint_path)
    inputs = make_mrc_inputs(run)
    full = score_modules(run, inputs)
    run.config = config.model_copy(update={"mrc": config.mrc.model_copy(
        update={"table": "selection"})})
    selection = score_modules(run, inputs)
    # Digits' small CNN has 4 modules: with 2 kept, nothing may be left to stop.
    _same_choice(full.rows, selection.rows, candidates, 4, fewer=candidates == 1)
    assert selection.selected_module == full.selected_module
    assert ([c.module for c in candidates_from_mrc(selection.rows, k=candidates, module=None,
                                                   lrs=[0.1])]
            == [c.module for c in candidates_from_mrc(full.rows, k=candidates, module=None,
                                                      lrs=[0.1])])
    csv = mrc_table_csv(selection.rows, selection.selected_module)
    assert csv.splitlines()[0].endswith("max_ascent_loss,passes,exact,zero_gradient,selected")
    if candidates == 1:
        assert ",False," in csv  # a lower bound is flagged in the file

    # Shards apply the rule with their own bar: the merge still chooses the same module.
    names = select_modules(run.model, config.mrc)
    groups = partition_modules(estimate_module_costs(run.model, inputs.adversarial, names), 2)
    parts = [MRCStageResult.from_json(score_modules(run, inputs, group).to_json())
             for group in groups]
    merged = MRCStageResult.merge(parts, names)
    assert merged.selected_module == full.selected_module
    _same_choice(full.rows, merged.rows, candidates, 4, fewer=False)


def test_a_named_finetune_module_is_scored_exactly(digits_checkpoint_path: Path,
                                                   digits_job_config: dict[str, Any]) -> None:
    digits_job_config["mrc"].update(steps=3, num_examples=64, batch_size=32, table="selection")
    config = RiftConfig.model_validate(digits_job_config)
    run = prepare_run(config, digits_checkpoint_path)
    inputs = make_mrc_inputs(run)
    names = select_modules(run.model, config.mrc)
    bounds = [row["name"] for row in score_modules(run, inputs).rows if not row["exact"]]
    assert bounds, "nothing was stopped early: the test cannot tell"
    run.config = config.model_copy(update={"finetune": config.finetune.model_copy(
        update={"module": bounds[0]})})
    rows = {row["name"]: row for row in score_modules(run, inputs).rows}
    assert rows[bounds[0]]["exact"] and rows[bounds[0]]["passes"] == 3
    assert set(rows) == set(names) and not math.isnan(rows[bounds[0]]["mrc"])


def test_the_cli_table_marks_lower_bounds() -> None:
    from rift.cli import format_mrc_table

    rows = [{"name": "conv", "parameters": 10, "mrc": 0.53, "robust_accuracy_at_worst": 40.0,
             "robust_accuracy_drop": 5.0, "passes": 1, "exact": False},
            {"name": "fc", "parameters": 5, "mrc": 0.1, "robust_accuracy_at_worst": 44.0,
             "robust_accuracy_drop": 1.0, "passes": 10, "exact": True}]
    text = format_mrc_table(rows, "fc")
    assert "≥ 0.5300" in text and "stopped after 1 passes" in text and "1 module(s)" in text
    assert "≥" not in format_mrc_table(rows[1:], "fc")
