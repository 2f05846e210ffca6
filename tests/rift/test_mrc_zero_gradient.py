"""A module the loss on the MRC set does not depend on (its weights' gradient exactly zero on every
batch: a branch behind a zero gate) is flagged ``zero_gradient`` in the table and never chosen
(rift/mrc_zero_gradient.py). Before, its MRC of exactly 0 made it the chosen module, and the run
then failed at fine-tuning ("would change nothing", field finetune.module); a sweep that tried
such a module failed as a whole instead of excluding it."""

from __future__ import annotations

import copy
import csv
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rift.config import MRCSpec, RiftConfig
from rift.errors import ConfigError, ModuleWithoutEffect
from rift.models import registry
from rift.mrc import merge_reports, module_robust_criticality, row_from_dict
from rift.pipeline import PipelineCallbacks, prepare_run, run_mrc_stage, run_pipeline
from tests.module_factories import GatedBranch, TrainDroppedBranch

SMALL_MRC = {"steps": 1, "num_examples": 32, "batch_size": 32}


def _inputs() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    return (torch.rand(48, 1, 8, 8, generator=generator),
            torch.randint(0, 10, (48,), generator=generator))


def test_a_gated_branch_is_flagged_and_the_next_module_chosen_in_every_table() -> None:
    torch.manual_seed(0)
    model = GatedBranch().eval()
    images, labels = _inputs()
    spec = MRCSpec(steps=3, batch_size=16, eps=0.5)
    full = module_robust_criticality(model, images, labels, spec)
    rows = {row.name: row for row in full.modules}
    assert [name for name, row in rows.items() if row.zero_gradient] == ["branch"]
    assert full.zero_gradient == ["branch"]
    # Its MRC is the lowest, exactly 0: the rule chose it before.
    assert rows["branch"].mrc == 0.0 < min(rows["stem"].mrc, rows["head"].mrc)
    live = min(("stem", "head"), key=lambda name: rows[name].mrc)
    assert full.lowest().name == live
    assert [row.name for row in full.lowest_k(3)] == sorted(
        ("stem", "head"), key=lambda name: rows[name].mrc)  # never the flagged row

    # mrc.table "selection": the flagged row sets no bar (it stopped the live modules early,
    # and the rule then refused to choose a lower bound); the same choice, its row exact.
    selection = module_robust_criticality(
        model, images, labels, spec.model_copy(update={"table": "selection"}))
    chosen = selection.lowest()
    assert chosen.name == live and chosen.exact and chosen.mrc == full.lowest().mrc
    assert [row.name for row in selection.modules if row.zero_gradient] == ["branch"]

    # Shards: each flags its own modules; the merged table chooses as the one-task table.
    parts = [module_robust_criticality(model, images, labels,
                                       spec.model_copy(update={"modules": group}))
             for group in (["branch"], ["stem", "head"])]
    merged = merge_reports(parts, ["stem", "branch", "head"])
    assert merged.lowest().name == live and merged.zero_gradient == ["branch"]

    # With the gate open nothing is flagged.
    torch.manual_seed(0)
    opened = module_robust_criticality(GatedBranch(gate=1.0).eval(), images, labels, spec)
    assert not any(row.zero_gradient for row in opened.modules) and not opened.zero_gradient


def test_a_row_reused_from_a_stage_recorded_before_the_flag_is_flagged() -> None:
    """A stopped MRC stage resumed (``done``) takes its stored rows as they are; one stored
    before ``zero_gradient`` existed read as False and the gated branch was chosen again."""
    torch.manual_seed(0)
    model = GatedBranch().eval()
    images, labels = _inputs()
    spec = MRCSpec(steps=2, batch_size=16, eps=0.5)
    whole = module_robust_criticality(model, images, labels, spec)
    stored = {row.name: row_from_dict({k: v for k, v in row.as_dict().items()
                                       if k != "zero_gradient"}) for row in whole.modules[:2]}
    assert stored["branch"] is not None and not stored["branch"].zero_gradient
    resumed = module_robust_criticality(model, images, labels, spec, done=stored)
    assert resumed.reused == ["stem", "branch"]
    assert [row.name for row in resumed.modules if row.zero_gradient] == ["branch"]
    assert resumed.lowest().name == whole.lowest().name != "branch"


def test_a_table_of_flagged_modules_only_chooses_none() -> None:
    torch.manual_seed(0)
    images, labels = _inputs()
    report = module_robust_criticality(GatedBranch().eval(), images, labels,
                                       MRCSpec(steps=1, batch_size=48, modules=["branch"]))
    with pytest.raises(ConfigError, match="every module of the MRC table gets a gradient of "
                       r"exactly zero on the MRC set \(branch\)") as refused:
        report.lowest()
    assert refused.value.field == "mrc.exclude"


class GatedBranchNet(nn.Module):
    """A residual branch of two convolutions closed by a BatchNorm ``gate``: with the gate's
    weight 0 the branch's output is the gate's bias whatever its weights, so both branch
    convolutions get exactly zero gradients (connected, so scored) and MRC exactly 0."""

    def __init__(self, num_classes: int = 10, **_: Any) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.branch_a = nn.Conv2d(8, 8, 3, padding=1)
        self.branch_b = nn.Conv2d(8, 8, 3, padding=1)
        self.gate = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.stem(x))
        out = out + self.gate(self.branch_b(F.relu(self.branch_a(out))))
        return self.head(out.mean((2, 3)))


def _config(base: dict[str, Any], **sections: dict[str, Any]) -> RiftConfig:
    raw = copy.deepcopy(base)
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return RiftConfig.model_validate(raw)


def _install(monkeypatch: pytest.MonkeyPatch, name: str, cls: type[nn.Module]) -> None:
    monkeypatch.setattr(registry, "_installed_builder", lambda wanted: (
        (lambda num_classes, **_: cls(num_classes)) if wanted == name else None))


_FAST = {"preflight": {"examples": 0}, "mrc": SMALL_MRC,
         "finetune": {"epochs": 1, "lr_milestones": [5]}, "interpolation": {"alpha_step": 0.5},
         "evaluation": {"max_examples": 64}}


@pytest.mark.parametrize("table", ["full", "selection"])
def test_the_default_run_tunes_the_next_module_and_warns_of_the_flagged_ones(
        digits_job_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        table: str) -> None:
    """Before: the run chose branch_a (MRC exactly 0, tied with branch_b) and failed at
    fine-tuning with "'branch_a' would change nothing"."""
    _install(monkeypatch, "gated_branch_net", GatedBranchNet)
    config = _config(digits_job_config, architecture={"name": "gated_branch_net"},
                     **{**_FAST, "mrc": {**SMALL_MRC, "table": table}})
    torch.manual_seed(0)
    state = GatedBranchNet().state_dict()
    state["gate.weight"].zero_()
    events: list[tuple[str, dict[str, Any]]] = []
    callbacks = PipelineCallbacks(on_event=lambda kind, data: events.append((kind, data)))
    mrc = run_mrc_stage(prepare_run(config, state), callbacks)
    flagged = [row["name"] for row in mrc.rows if row["zero_gradient"]]
    assert flagged == ["branch_a", "branch_b"]
    assert all(row["mrc"] == 0.0 for row in mrc.rows if row["zero_gradient"])
    assert mrc.selected_module in ("stem", "head")
    warnings = [data["message"] for kind, data in events if kind == "warning"]
    named = [w for w in warnings if w.startswith("not chosen: branch_a, branch_b:")]
    assert len(named) == 1 and "mrc.exclude" in named[0] and "zero_gradient" in named[0]
    assert not any("decided by a tie" in w for w in warnings)  # flagged rows are no rivals

    result = run_pipeline(config, state, tmp_path / "run")
    assert result["selected_module"] == mrc.selected_module
    with (tmp_path / "run" / "mrc.csv").open() as file:
        table_rows = {row["name"]: row for row in csv.DictReader(file)}
    assert table_rows["branch_a"]["zero_gradient"] == "True"
    assert table_rows[mrc.selected_module]["zero_gradient"] == "False"
    assert table_rows[mrc.selected_module]["selected"] == "True"


def test_a_sweep_excludes_a_candidate_refused_for_a_zero_gradient_unless_it_was_named(
        digits_job_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """Before, the refused candidate failed the whole sweep."""
    _install(monkeypatch, "train_dropped_branch", TrainDroppedBranch)
    torch.manual_seed(0)
    state = TrainDroppedBranch().state_dict()
    config = _config(digits_job_config, architecture={"name": "train_dropped_branch"},
                     **{**_FAST, "finetune": {**_FAST["finetune"], "candidates": 3,
                                              "lr_grid": [0.05]}})
    warnings: list[str] = []
    callbacks = PipelineCallbacks(on_event=lambda kind, data: warnings.append(data["message"])
                                  if kind == "warning" else None)
    result = run_pipeline(config, state, tmp_path / "sweep", callbacks)
    sweep = result["sweep"]
    modules = [candidate["module"] for candidate in sweep["candidates"]]
    assert sorted(modules) == ["branch", "head", "stem"]
    dropped = modules.index("branch")
    assert sweep["excluded"] == [dropped] and sweep["chosen"] != dropped
    excluded = sweep["candidates"][dropped]
    assert "'branch' would change nothing" in excluded["reason"]
    assert excluded["field"] == "finetune.module"
    assert any("candidate 'branch' at lr 0.05 is excluded" in w for w in warnings), warnings

    named = _config(digits_job_config, architecture={"name": "train_dropped_branch"},
                    **{**_FAST, "finetune": {**_FAST["finetune"], "module": "branch",
                                             "lr_grid": [0.05, 0.01]}})
    with pytest.raises(ModuleWithoutEffect, match="'branch' would change nothing") as refused:
        run_pipeline(named, state, tmp_path / "named")
    assert refused.value.field == "finetune.module"
