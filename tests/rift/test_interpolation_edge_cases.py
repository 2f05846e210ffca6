"""The α rule on curves a real run can produce at the edges: non-finite logits at some α (a
diverged θ_FT), which torch's argmax reads as class 0; both curve modes choose the same α."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rift.attacks import PGD
from rift.config import RiftConfig
from rift.data import ImageTensors
from rift.evaluation import evaluate_accuracy
from rift.models import build_model
from rift.pipeline import PipelineCallbacks, prepare_run, run_interpolation_stage
from rift.sequential_attack import attack_until, clean_outcomes

CPU = torch.device("cpu")


def _nan_model() -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with torch.no_grad():
        model[1].weight[0, 0] = math.nan
    return model


def test_non_finite_logits_are_never_a_correct_answer() -> None:
    # torch.argmax takes NaN for the largest value: every example of class 0 was "correct",
    # clean and under attack (PGD's NaN gradient makes a NaN image, whose logits are NaN too).
    data = ImageTensors(torch.rand(6, 3, 2, 2), torch.zeros(6, dtype=torch.long))
    model = _nan_model()
    report = evaluate_accuracy(model, data, attack=PGD(eps=0.1, step_size=0.05, steps=2),
                               batch_size=4, device=CPU)
    assert report.clean_accuracy == 0.0 and report.robust_accuracy == 0.0
    outcomes = clean_outcomes(model, data, batch_size=4, device=CPU)
    assert not outcomes.correct.any() and not outcomes.finite.any()
    attacked = attack_until(model, data, PGD(eps=0.1, step_size=0.05, steps=2), at_least=0,
                            chunk=4, device=CPU, seed=0)
    assert attacked.tally.correct == 0 and attacked.tally.complete


def _majority_class_config(folder: Path) -> RiftConfig:
    """Random 8×8 images where class 0 is 3 in 4 labels: a NaN model's argmax (0) is then
    right more often than a weak θ_AT."""
    rng = np.random.default_rng(0)
    np.savez(folder / "d.npz", x=rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8),
             y=np.where(np.arange(64) % 4 == 3, 1, 0))
    return RiftConfig.model_validate({
        "architecture": {"name": "small_cnn", "num_classes": 2},
        "dataset": {"name": "npz", "path": str(folder / "d.npz"), "validation_fraction": 0.25},
        "attack": {"eps": 0.03, "step_size": 0.01, "steps": 2},
        "interpolation": {"alpha_step": 0.5}, "evaluation": {"max_examples": 16},
        "preflight": {"examples": 0}, "device": "cpu"})


@pytest.mark.parametrize("curve", ["full", "selection"])
def test_a_diverged_theta_ft_is_never_chosen_silently(tmp_path: Path, curve: str) -> None:
    config = _majority_class_config(tmp_path)
    config = config.model_copy(update={"interpolation": config.interpolation.model_copy(
        update={"curve": curve})})
    torch.manual_seed(3)
    state = build_model(config.architecture, in_channels=3, image_size=8).state_dict()
    head = [key for key in state if key.endswith(".bias")][-1]
    state[head][1] += 5.0  # θ_AT answers class 1 mostly: below the majority class's share
    run = prepare_run(config, state)
    theta_ft = {key: value.clone() for key, value in run.original_state.items()}
    theta_ft[head.replace(".bias", ".weight")][0, 0] = math.nan  # a diverged fine-tune
    warnings: list[str] = []
    result = run_interpolation_stage(run, theta_ft, PipelineCallbacks(
        on_event=lambda kind, data: warnings.append(data["message"]) if kind == "warning"
        else None))
    # Before, every α > 0 scored the majority class's share, clean and robust, above θ_AT's,
    # and α = 0.5 (NaN weights) was chosen without a word.
    assert result.chosen_alpha == 0.0
    assert all(torch.isfinite(value).all() for value in result.state_dict.values()
               if value.is_floating_point())
    assert [point["clean_accuracy"] for point in result.points[1:]] == [0.0, 0.0]
    assert any("NaN or infinite logits at α = 0.5" in message and "α = 1 (" in message
               for message in warnings), warnings
