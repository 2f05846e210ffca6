"""What a run measured that makes its result mean little is a ``warning`` event
(rift/measured_warnings.py): θ_AT with a robust accuracy of 0 % under the job's attack, and an MRC
choice decided by a tie. Before, both ran to "success" without a word (an untrained
mobilenet_v3_small: robust 0 %, every MRC exactly 0, the first module chosen by the tie-break)."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rift.config import RiftConfig
from rift.measured_warnings import mrc_table_warnings, not_robust_warning, tie_warning
from rift.models import registry
from rift.pipeline import (
    PipelineCallbacks,
    prepare_run,
    run_mrc_stage,
    run_pipeline,
    run_preflight_stage,
)

# An L∞ radius of 0.3 on [0, 1] digits, three times the one the digits θ_AT was trained for: no
# example withstands it while clean accuracy passes the preflight (0.5, where every image can be
# moved to mid-grey, is refused by rift.attack_radius).
MISMATCHED_ATTACK = {"eps": 0.3, "step_size": 0.075, "steps": 10}
SMALL_MRC = {"steps": 1, "num_examples": 32, "batch_size": 32}


def _row(name: str, mrc: float, max_ascent_loss: float = math.nan, exact: bool = True
         ) -> dict[str, Any]:
    return {"name": name, "parameters": 10, "mrc": mrc, "worst_robust_loss": 1.0 + mrc,
            "robust_accuracy_at_worst": 0.0, "robust_accuracy_drop": 0.0, "seconds": 0.1,
            "max_ascent_loss": max_ascent_loss, "passes": 2, "exact": exact}


def _config(base: dict[str, Any], **sections: dict[str, Any]) -> RiftConfig:
    raw = copy.deepcopy(base)
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return RiftConfig.model_validate(raw)


def _warnings(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [payload for kind, payload in events if kind == "warning"]


def _recorder() -> tuple[list[tuple[str, dict[str, Any]]], PipelineCallbacks]:
    events: list[tuple[str, dict[str, Any]]] = []
    return events, PipelineCallbacks(on_event=lambda kind, data: events.append((kind, data)))


# ----------------------------------------------------------------- the pure table checks


def test_a_tie_at_the_lowest_mrc_says_how_many_at_which_value_and_what_broke_it() -> None:
    rows = [_row("conv1", 0.0, 2.0), _row("conv2", 0.0, 1.5), _row("fc", 0.3, 2.4)]
    warning = tie_warning(rows, 1)
    assert warning is not None and warning.stage == "mrc"
    assert "2 modules have MRC exactly 0 (conv1, conv2)" in warning.message
    assert ("conv2 was chosen by the ascent's max_ascent_loss (1.5 for conv2 against 2 for "
            "conv1)") in warning.message
    # The same losses too: definition order decided.
    rows[1]["max_ascent_loss"] = 2.0
    warning = tie_warning(rows, 1)
    assert warning is not None
    assert "conv1 was chosen by definition order" in warning.message
    assert "max_ascent_loss too: 2" in warning.message


def test_no_tie_no_warning_and_a_lower_bound_is_no_tie() -> None:
    assert tie_warning([_row("conv1", 0.1), _row("conv2", 0.2)], 1) is None
    assert tie_warning([_row("only", 0.0)], 1) is None
    assert tie_warning([], 1) is None
    # mrc.table "selection": a row stopped early holds a lower bound, not a value to tie with.
    assert tie_warning([_row("conv1", 0.1, 1.0), _row("conv2", 0.1, 1.0, exact=False)], 1) is None
    # A row flagged zero_gradient is never chosen (rift.mrc_zero_gradient): no rival either.
    assert tie_warning([_row("conv1", 0.0, 1.0), {**_row("gated", 0.0, 1.0),
                                                  "zero_gradient": True}], 1) is None
    # Ties above the chosen value decide nothing.
    assert tie_warning([_row("a", 0.05), _row("b", 0.2), _row("c", 0.2)], 1) is None


def test_with_candidates_only_a_tie_across_the_kth_and_the_next_counts() -> None:
    rows = [_row("a", 0.1, 1.0), _row("b", 0.1, 1.0), _row("c", 0.4, 1.4), _row("d", 0.4, 1.4)]
    assert tie_warning(rows, 2) is None  # a and b tie, but both are tried
    warning = tie_warning(rows, 3)
    assert warning is not None
    assert "2 modules have MRC exactly 0.4 (c, d)" in warning.message
    assert "finetune.candidates is 3: its 3rd lowest, c, was tried and 1 tied module(s) left out"\
        in warning.message
    assert "raise finetune.candidates to 4" in warning.message
    assert tie_warning(rows, 4) is None  # every module is tried


def test_the_table_checks_name_the_measurement_and_respect_the_settings(
        digits_job_config: dict) -> None:
    tied = [_row("conv1", 0.0, 2.0), _row("conv2", 0.0, 2.0)]
    skipped = _config(digits_job_config, preflight={"examples": 0})
    found = mrc_table_warnings(skipped, tied, baseline_robust_accuracy=0.0, examples=32)
    assert [w.stage for w in found] == ["mrc", "mrc"]
    assert ("θ_AT's robust accuracy is 0 % on the MRC set's 32 adversarial examples from the "
            "training split") in found[0].message
    assert "attack.eps 0.1" in found[0].message and "tie" in found[1].message
    # A preflight measured θ_AT (and warned on its own figure): the MRC baseline does not again.
    found = mrc_table_warnings(RiftConfig.model_validate(digits_job_config), tied,
                               baseline_robust_accuracy=0.0, examples=32)
    assert ["tie" in w.message for w in found] == [True]
    # finetune.module names the module: nothing is chosen, so no tie decides anything.
    named = _config(digits_job_config, preflight={"examples": 0}, finetune={"module": "fc"})
    assert len(mrc_table_warnings(named, tied, baseline_robust_accuracy=0.0, examples=32)) == 1
    # Robust accuracy above 0, however small, is a figure, not a verdict.
    assert not_robust_warning(skipped, 0.4, "x", "mrc") is None
    assert not_robust_warning(skipped, None, "x", "mrc") is None


# ----------------------------------------------------------------- in the library's stages


def test_a_checkpoint_not_robust_under_the_attack_warns_at_the_preflight_not_again_at_mrc(
        digits_checkpoint_path, digits_job_config: dict) -> None:
    """The digits θ_AT under the attack it was trained for: no warning; under an L∞ radius of
    0.3: robust accuracy 0 on the preflight's sample (clean accuracy still passes), one warning
    naming the sample and the attack settings, and none from the MRC baseline."""
    matched = _config(digits_job_config, preflight={"examples": 64}, mrc=SMALL_MRC)
    events, callbacks = _recorder()
    report = run_preflight_stage(prepare_run(matched, digits_checkpoint_path), callbacks)
    assert report is not None and report.robust_accuracy and report.robust_accuracy > 0
    assert not [w for w in _warnings(events) if "robust accuracy is 0" in w["message"]]

    mismatched = _config(digits_job_config, preflight={"examples": 64}, mrc=SMALL_MRC,
                         attack=MISMATCHED_ATTACK)
    run = prepare_run(mismatched, digits_checkpoint_path)
    events, callbacks = _recorder()
    report = run_preflight_stage(run, callbacks)
    assert report is not None and report.robust_accuracy == 0.0
    assert report.clean_accuracy > report.threshold  # it passes: only the warning tells
    warned = [w for w in _warnings(events) if "robust accuracy is 0" in w["message"]]
    assert len(warned) == 1 and warned[0]["stage"] == "preflight"
    assert "on the preflight's 64 test examples" in warned[0]["message"]
    assert "attack.eps 0.3" in warned[0]["message"]
    assert "architecture.normalization" in warned[0]["message"]
    events.clear()
    mrc = run_mrc_stage(run, callbacks)
    assert mrc.baseline_robust_accuracy == 0.0
    assert not [w for w in _warnings(events) if "robust accuracy is 0" in w["message"]]


def test_without_a_preflight_the_mrc_baseline_tells(digits_checkpoint_path,
                                                    digits_job_config: dict) -> None:
    config = _config(digits_job_config, preflight={"examples": 0}, mrc=SMALL_MRC,
                     attack=MISMATCHED_ATTACK)
    events, callbacks = _recorder()
    run = prepare_run(config, digits_checkpoint_path)
    assert run_preflight_stage(run, callbacks) is None
    mrc = run_mrc_stage(run, callbacks)
    warned = [w for w in _warnings(events) if "robust accuracy is 0" in w["message"]]
    assert mrc.baseline_robust_accuracy == 0.0 and len(warned) == 1
    assert warned[0]["stage"] == "mrc"
    assert "on the MRC set's 32 adversarial examples from the training split" in \
        warned[0]["message"]


class TwinBranchNet(nn.Module):
    """A stem, two parallel branches summed onto the skip path, a head. With the branches'
    weights equal, perturbing either gives the same sum (a' + b is b + a' bit for bit) and the
    same gradient, so they tie bit for bit. (It was a branch behind a zero BatchNorm gate, tied
    at MRC 0; such modules are now flagged and never chosen: tests/rift/test_mrc_zero_gradient.py.)
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, **_: Any) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.branch_a = nn.Conv2d(8, 8, 3, padding=1)
        self.branch_b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.stem(x))
        out = out + (self.branch_a(out) + self.branch_b(out))
        return self.head(out.mean((2, 3)))


def test_a_tied_mrc_choice_warns_in_the_stage_and_again_when_a_run_reloads_the_table(
        digits_job_config: dict, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(registry, "_installed_builder", lambda name: (
        (lambda **options: TwinBranchNet(**options)) if name == "twin_branch_net" else None))
    config = _config(digits_job_config, architecture={"name": "twin_branch_net"},
                     preflight={"examples": 0}, mrc={**SMALL_MRC, "exclude": ["stem", "head"]},
                     finetune={"epochs": 1, "lr_milestones": [5]},
                     interpolation={"alpha_step": 0.5}, evaluation={"max_examples": 64})
    torch.manual_seed(0)
    state = TwinBranchNet().state_dict()
    state["branch_b.weight"] = state["branch_a.weight"].clone()
    state["branch_b.bias"] = state["branch_a.bias"].clone()
    events, callbacks = _recorder()
    mrc = run_mrc_stage(prepare_run(config, state), callbacks)
    mrcs = {row["name"]: row["mrc"] for row in mrc.rows}
    assert list(mrcs) == ["branch_a", "branch_b"] and mrcs["branch_a"] == mrcs["branch_b"] > 0
    assert mrc.selected_module == "branch_a"
    ties = [w for w in _warnings(events) if "decided by a tie" in w["message"]]
    assert len(ties) == 1 and ties[0]["stage"] == "mrc"
    assert f"2 modules have MRC exactly {mrcs['branch_a']:.6g} (branch_a, branch_b)" in ties[0][
        "message"]
    assert "branch_a was chosen by definition order" in ties[0]["message"]

    # A run whose saved table is loaded (the stage skipped) still says its choice is a tie.
    out = tmp_path / "run"
    run_pipeline(config, state, out)
    events.clear()
    run_pipeline(config, state, out, callbacks)
    assert ("stage_skipped", {"stage": "mrc", "reason": "output already saved"}) in events
    assert [w["message"] for w in _warnings(events) if "decided by a tie" in w["message"]] == [
        ties[0]["message"]]
