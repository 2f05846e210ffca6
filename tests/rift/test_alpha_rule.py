"""The α rule in the pipeline, checked against a curve measured independently: θ_α computed here
entry by entry in float64 (not with ``interpolate_weights``) and evaluated with the evaluation
function directly; the test needs a curve whose most robust and most accurate points differ."""

from __future__ import annotations

from pathlib import Path

import torch

from rift import checkpoints
from rift.config import RiftConfig
from rift.demo_tabular import make_tabular_checkpoint, tabular_demo_config, write_breast_cancer_npz
from rift.evaluation import evaluate_accuracy
from rift.pipeline import prepare_run, run_finetune_stage, run_interpolation_stage


def _mix(start: torch.Tensor, end: torch.Tensor, alpha: float) -> torch.Tensor:
    if not start.is_floating_point():
        return (end if alpha == 1.0 else start).clone()
    return ((1 - alpha) * start.double() + alpha * end.double()).to(start.dtype)


def test_chosen_alpha_is_the_most_accurate_point_that_keeps_robustness(tmp_path: Path) -> None:
    npz = write_breast_cancer_npz(tmp_path / "bc.npz")
    make_tabular_checkpoint(tmp_path / "ck.safetensors", npz, epochs=3)
    raw = tabular_demo_config(npz)
    raw["finetune"].update(epochs=3, lr=0.2, lr_milestones=[], module="layers.1")
    raw["interpolation"].update(alpha_step=0.125, robust_tolerance=0.0)
    raw["preflight"] = {"examples": 0}
    config = RiftConfig.model_validate(raw)
    run = prepare_run(config, tmp_path / "ck.safetensors")
    finetuned = run_finetune_stage(run, "layers.1").state_dict
    stage = run_interpolation_stage(run, finetuned)

    curve = []
    for index in range(9):
        alpha = index / 8
        state = {key: _mix(value, finetuned[key], alpha)
                 for key, value in run.original_state.items()}
        if alpha == stage.chosen_alpha:
            for key, value in state.items():
                torch.testing.assert_close(stage.state_dict[key], value, rtol=1e-6, atol=1e-7)
        checkpoints.load_into(run.model, state)
        report = evaluate_accuracy(run.model, run.splits.test, attack=run.attack,
                                   batch_size=256, device=run.device, seed=config.seed)
        curve.append((alpha, report.clean_accuracy, float(report.robust_accuracy or 0.0)))
    run.reset_weights()

    most_robust = max(curve, key=lambda point: (point[2], -point[0]))
    most_accurate = max(curve, key=lambda point: (point[1], -point[0]))
    assert most_robust[0] != most_accurate[0], curve  # the curve makes the rule matter
    baseline_robust = curve[0][2]
    keeping = [point for point in curve if point[2] >= baseline_robust]
    best_clean = max(point[1] for point in keeping)
    expected = min(point[0] for point in keeping if point[1] == best_clean)
    assert stage.chosen_alpha == expected, curve
    assert stage.after["robust_accuracy"] >= stage.before["robust_accuracy"]
