"""The preflight check fails a run whose checkpoint is near chance on the job's data, before any
stage runs, and reports its figures in the result otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rift.attacks import PGD
from rift.config import PreflightSpec, RiftConfig
from rift.data import ImageTensors
from rift.demo_tabular import make_tabular_checkpoint, tabular_demo_config, write_breast_cancer_npz
from rift.pipeline import PipelineCallbacks, run_pipeline
from rift.preflight import (
    MIN_JUDGED_EXAMPLES,
    PreflightError,
    PreflightReport,
    chance_accuracy,
    preflight_check,
    unjudged_warning,
)


def _fast(npz: Path) -> RiftConfig:
    raw = tabular_demo_config(npz)
    raw["mrc"].update(steps=1, num_examples=32)
    raw["finetune"].update(epochs=1, lr_milestones=[])
    raw["interpolation"]["alpha_step"] = 1.0
    return RiftConfig.model_validate(raw)


def test_preflight_figures_and_refusal_on_swapped_classes(tmp_path: Path) -> None:
    npz = write_breast_cancer_npz(tmp_path / "bc.npz")
    make_tabular_checkpoint(tmp_path / "ck.safetensors", npz, epochs=3)
    events: list[tuple[str, dict]] = []
    result = run_pipeline(_fast(npz), tmp_path / "ck.safetensors", tmp_path / "ok",
                          PipelineCallbacks(on_event=lambda k, d: events.append((k, d))))
    figures = result["preflight"]
    assert figures["clean_accuracy"] > 80.0 and figures["robust_accuracy"] is not None
    assert figures["examples"] == 114  # the whole test split (fewer than 256 examples)
    assert events[0] == ("preflight", figures)

    # The same data with the two classes numbered the other way round.
    with np.load(npz) as archive:
        np.savez(tmp_path / "swapped.npz", x=archive["x"], y=1 - archive["y"])
    swapped = _fast(tmp_path / "swapped.npz")
    events.clear()
    with pytest.raises(PreflightError) as refused:
        run_pipeline(swapped, tmp_path / "ck.safetensors", tmp_path / "bad",
                     PipelineCallbacks(on_event=lambda k, d: events.append((k, d))))
    message = refused.value.message
    assert "near chance" in message and "class order" in message and "normalization" in message
    assert not any(kind == "stage_started" for kind, _ in events)
    assert not (tmp_path / "bad" / "mrc.json").exists()
    # Skipping the check is possible and explicit.
    skipped = swapped.model_copy(update={"preflight": swapped.preflight.model_copy(
        update={"examples": 0})})
    assert run_pipeline(skipped, tmp_path / "ck.safetensors", tmp_path / "bad")["preflight"] is None


def _imbalanced() -> ImageTensors:
    # 90 examples of class 0 (feature 0.2), 10 of class 1 (feature 0.8): (N, 1, 1, 1) inputs.
    labels = torch.tensor([0] * 90 + [1] * 10)
    return ImageTensors(torch.where(labels == 1, 0.8, 0.2).view(-1, 1, 1, 1), labels)


def _threshold_model(weight: float, bias: float) -> nn.Module:
    # logits (0, weight · (x − 0.5) + bias): weight 0 and bias −1 answer class 0 for everything.
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.0], [weight]]))
        model[1].bias.copy_(torch.tensor([0.0, bias - weight / 2]))
    return model


def _check(model: nn.Module) -> PreflightReport:
    return preflight_check(model, _imbalanced(), PGD(eps=0.05, step_size=0.05, steps=1),
                           PreflightSpec(examples=256), num_classes=10, batch_size=64,
                           device=torch.device("cpu"), seed=0, normalization_given=False)


def test_chance_is_the_majority_share_when_it_beats_a_uniform_guess() -> None:
    labels = _imbalanced().labels
    assert chance_accuracy(labels, 10)[0] == pytest.approx(90.0)
    assert chance_accuracy(torch.arange(20) % 10, 10)[0] == pytest.approx(10.0)  # uniform
    assert chance_accuracy(torch.arange(20) % 2, 10)[0] == pytest.approx(50.0)  # 2 of 10 used
    # Before: chance was 100 / 10 classes, so answering class 0 for everything (90 %) passed.
    with pytest.raises(PreflightError, match=r"near chance \(90\.0%: always answering class 0"):
        _check(_threshold_model(0.0, -1.0))
    # A model that reads its input passes; the bar is at most halfway from 90 % to 100 %.
    report = _check(_threshold_model(100.0, 0.0))
    assert report.clean_accuracy == 100.0 and report.threshold == pytest.approx(95.0)


def test_a_sample_too_small_to_tell_from_chance_is_reported_not_judged() -> None:
    """Found by the config fuzz (dataset.max_test_examples 1): one example is 100 % one class,
    so chance was 100 % and a single miss failed the run as "near chance"."""
    collapsed = _threshold_model(0.0, -1.0)  # answers class 0 for everything
    one = ImageTensors(torch.full((1, 1, 1, 1), 0.8), torch.tensor([1]))
    report = preflight_check(collapsed, one, PGD(eps=0.05, step_size=0.05, steps=1),
                             PreflightSpec(examples=256), num_classes=10, batch_size=64,
                             device=torch.device("cpu"), seed=0, normalization_given=False)
    assert (report.examples, report.clean_accuracy) == (1, 0.0)
    assert "too few to tell it from chance" in (unjudged_warning(report.examples) or "")
    # From MIN_JUDGED_EXAMPLES on, the same model is refused.
    with pytest.raises(PreflightError, match="near chance"):
        preflight_check(collapsed, _imbalanced(), PGD(eps=0.05, step_size=0.05, steps=1),
                        PreflightSpec(examples=MIN_JUDGED_EXAMPLES), num_classes=10,
                        batch_size=64, device=torch.device("cpu"), seed=0,
                        normalization_given=False)
    assert unjudged_warning(MIN_JUDGED_EXAMPLES) is None and unjudged_warning(0) is None


def test_a_checkpoint_trained_on_0_255_pixels_is_refused_naming_the_std_that_fits(
        digits_checkpoint_info: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digits θ_AT behind a forward that expects pixel values in [0, 255] (dividing them
    back): on RiFT's [0, 1] images it is near chance; the message names mean [0] and std 1/255,
    and with them the same checkpoint passes."""
    import copy

    from rift.demo import DIGITS_DEMO_CONFIG
    from rift.models import registry
    from rift.models.small_cnn import SmallCNN
    from rift.pipeline import prepare_run, run_preflight_stage

    def expects_0_255(**options: object) -> nn.Module:
        model = SmallCNN(**options)  # type: ignore[arg-type]
        model.__class__ = type("Expects0To255", (SmallCNN,), {
            "forward": lambda self, x: SmallCNN.forward(self, x / 255)})
        return model

    monkeypatch.setattr(registry, "_installed_builder",
                        lambda name: expects_0_255 if name == "pixels_0_255" else None)
    raw = copy.deepcopy(DIGITS_DEMO_CONFIG)
    raw.update(device="cpu", preflight={"examples": 128})
    raw["architecture"]["name"] = "pixels_0_255"
    with pytest.raises(PreflightError) as refused:
        run_preflight_stage(prepare_run(RiftConfig.model_validate(raw),
                                        digits_checkpoint_info["path"]))
    assert "[0, 255]" in refused.value.message
    assert "architecture.std [0.00392156862745098]" in refused.value.message
    # The measured comparison: the same sample at the [0, 255] scale passes.
    assert "Measured: the checkpoint's clean accuracy on 128 test examples" in (
        refused.value.message)
    assert "with the [0, 255] pixel scale" in refused.value.message
    raw["architecture"].update(mean=[0.0], std=[0.00392156862745098])
    report = run_preflight_stage(prepare_run(RiftConfig.model_validate(raw),
                                             digits_checkpoint_info["path"]))
    assert report is not None and report.clean_accuracy > 80.0


def test_predictions_collapsed_onto_one_class_are_a_warning(
        digits_checkpoint_info: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digits θ_AT fed 255 × its inputs (a checkpoint trained on [0, 1] given [0, 255]
    values, or the other way round) answers mostly one class yet may pass the chance bar; the
    preflight's sample says so in a warning. The same checkpoint on its own inputs: none."""
    import copy

    from rift.demo import DIGITS_DEMO_CONFIG
    from rift.models import registry
    from rift.models.small_cnn import SmallCNN
    from rift.pipeline import prepare_run
    from rift.preflight import collapsed_predictions

    def scaled(**options: object) -> nn.Module:
        model = SmallCNN(**options)  # type: ignore[arg-type]
        model.__class__ = type("Scaled", (SmallCNN,), {
            "forward": lambda self, x: SmallCNN.forward(self, x * 255)})
        return model

    monkeypatch.setattr(registry, "_installed_builder",
                        lambda name: scaled if name == "scaled" else None)
    raw = copy.deepcopy(DIGITS_DEMO_CONFIG)
    raw["device"] = "cpu"
    found = {}
    for name in ("small_cnn", "scaled"):
        raw["architecture"]["name"] = name
        run = prepare_run(RiftConfig.model_validate(raw), digits_checkpoint_info["path"])
        found[name] = collapsed_predictions(
            run.model, run.splits.test, run.config.preflight, batch_size=128,
            device=run.device, seed=0)
    assert found["small_cnn"] is None
    assert found["scaled"] is not None and "architecture.mean/std" in found["scaled"]
