"""A finished run's numbers, checked the way a user who does not trust them would: from the files
the run wrote, with the independent checker of ``tests/independent_checks.py`` (no rift attack,
evaluation, interpolation, MRC or checkpoint code). Tiny CPU runs through ``run_pipeline``:

- the digits θ_AT (``small_cnn``, BatchNorm) with an explicit ``architecture.mean/std``,
  ``bn_stats: "update"``, PGD without random start (exact agreement), the α chosen on the test split;
- a ResNet-18 (BatchNorm everywhere) on random 8×8 RGB images with ``normalization: "cifar10"``,
  ``bn_stats: "freeze"``, the α chosen on the validation split, uploaded as a DataParallel
  checkpoint (keys under ``module.``, inside a ``state_dict`` container of a torch file);
- the reference protocol (fine-tuning on training + validation, its epoch and the MRC set on the
  test split), with PGD random starts: robust accuracy compared within the spread of restarts.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rift.config import RiftConfig
from rift.data import load_dataset
from rift.models import build_model
from rift.pipeline import run_pipeline
from tests.independent_checks import (
    PlainPGD,
    WeightsExpectation,
    as_pixels,
    assert_count_over,
    check_curve,
    check_mrc_table,
    check_weights,
    clean_correct,
    mean_loss_and_accuracy,
    percent_of,
    read_safetensors,
    read_user_checkpoint,
    relative_ball_ascent,
    robust_correct,
    same_examples,
)
from tests.module_factories import with_running_statistics
from tests.tiny_configs import random_images_config


def _digits_config(**sections: dict[str, Any]) -> dict[str, Any]:
    """A tiny digits run: 300 training images (240 train, 60 validation), 120 test images, the
    whole training split as the MRC set (so it is known without the library's subset draw)."""
    config: dict[str, Any] = {
        "architecture": {"name": "small_cnn", "num_classes": 10},
        "dataset": {"name": "digits", "validation_fraction": 0.2, "max_train_examples": 300,
                    "max_test_examples": 120},
        "attack": {"eps": 0.1, "step_size": 0.025, "steps": 5, "random_start": False},
        "mrc": {"steps": 3, "num_examples": 1024, "batch_size": 512},
        "finetune": {"epochs": 3, "lr": 0.01, "batch_size": 64, "lr_milestones": []},
        "interpolation": {"alpha_step": 0.25},
        "evaluation": {"batch_size": 512, "fold_batchnorm": "off"},
        "preflight": {"examples": 0},
        "seed": 0,
        "device": "cpu",
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def _outputs(folder: Path) -> dict[str, Any]:
    tuned, tuned_meta = read_safetensors((folder / "tuned.safetensors").read_bytes())
    finetuned, _ = read_safetensors((folder / "finetuned.safetensors").read_bytes())
    return {"result": json.loads((folder / "result.json").read_text()),
            "tuned": tuned, "tuned_meta": tuned_meta, "finetuned": finetuned}


def _fresh_model(config: RiftConfig, image_shape: tuple[int, int, int]) -> nn.Module:
    channels, height, width = image_shape
    return build_model(config.architecture, in_channels=channels, image_size=height,
                       image_width=width).eval()


def _loaded(config: RiftConfig, image_shape: tuple[int, int, int],
            state: dict[str, torch.Tensor]) -> nn.Module:
    model = _fresh_model(config, image_shape)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _batches_per_epoch(examples: int, batch_size: int) -> int:
    return math.ceil(examples / batch_size)


def test_digits_run_with_normalisation_and_bn_update_checks_out(
        digits_checkpoint_path: Path, tmp_path: Path) -> None:
    # Two MRC batches per pass (240 examples in 128s): the replay below takes the same steps.
    raw = _digits_config(architecture={"mean": [0.1], "std": [0.8]}, mrc={"batch_size": 128},
                         finetune={"bn_stats": "update"})
    config = RiftConfig.model_validate(raw)
    # Uploaded in float16 and without BatchNorm counters, as some exports are.
    upload_path = tmp_path / "digits_fp16.safetensors"
    save_file({key: value.half() if value.is_floating_point() else value
               for key, value in read_user_checkpoint(digits_checkpoint_path).items()
               if not key.endswith("num_batches_tracked")}, str(upload_path))
    result = run_pipeline(config, upload_path, tmp_path / "out")
    out = _outputs(tmp_path / "out")
    assert out["result"] == json.loads(json.dumps(result))
    splits = load_dataset(config.dataset, config.seed)
    upload = read_user_checkpoint(upload_path)
    alpha, module = result["chosen_alpha"], result["selected_module"]
    best_epoch = result["finetune"]["best_epoch"]

    # 1. The weights.
    assert out["tuned_meta"]["alpha"] == repr(alpha) and out["tuned_meta"]["module"] == module
    check_weights(_fresh_model(config, splits.image_shape), upload, out["tuned"], out["finetuned"],
                  WeightsExpectation(module, alpha, "update",
                                     _batches_per_epoch(len(splits.train), 64), best_epoch))

    # 4. The data are raw pixels (uint8 of the digits' 0–16 scale), split without overlap.
    from sklearn.datasets import load_digits

    digits = np.rint(load_digits().images * (255 / 16)).astype(np.uint8)[:, None]
    everything = set(map(bytes, digits.reshape(len(digits), -1)))
    for part in (splits.train, splits.validation, splits.test):
        assert part.images.dtype == torch.uint8
        assert set(map(bytes, part.images.numpy().reshape(len(part), -1))) <= everything
    # (digits repeats a few images; the splits are index-disjoint, so compare sizes)
    assert len(splits.train) + len(splits.validation) == 300 and len(splits.test) == 120

    # 2. Accuracies on the split the config names (test), normalisation applied once: the model
    #    holds it, the inputs are pixels in [0, 1], eps in pixel units.
    test = splits.test
    # θ_AT as the run holds it: the upload's values in the architecture's float32.
    theta_at = _loaded(config, splits.image_shape, {**out["finetuned"], **upload})
    tuned = _loaded(config, splits.image_shape, out["tuned"])
    attack = PlainPGD(0.1, 0.025, 5)
    before_clean = clean_correct(theta_at, test.images, test.labels)
    before_robust = robust_correct(theta_at, test.images, test.labels, attack)
    after_clean = clean_correct(tuned, test.images, test.labels)
    after_robust = robust_correct(tuned, test.images, test.labels, attack)
    assert result["before"] == {"clean_accuracy": percent_of(before_clean),
                                "robust_accuracy": percent_of(before_robust)}
    assert result["after"] == {"clean_accuracy": percent_of(after_clean),
                               "robust_accuracy": percent_of(after_robust)}
    # The check has teeth: the normalisation applied twice or not at all gives other counts.
    twice = _fresh_model(RiftConfig.model_validate({**raw, "architecture": {
        "name": "small_cnn", "num_classes": 10, "mean": [0.1 + 0.8 * 0.1], "std": [0.8 * 0.8]}}),
        splits.image_shape)
    twice.load_state_dict(out["tuned"])
    none = _fresh_model(RiftConfig.model_validate({**raw, "architecture": {
        "name": "small_cnn", "num_classes": 10}}), splits.image_shape)
    none.load_state_dict(out["tuned"])
    for wrong in (twice, none):
        assert not torch.equal(robust_correct(wrong, test.images, test.labels, attack),
                               after_robust)

    # 5. The curve and the report.
    interpolation = result["interpolation"]
    assert interpolation["selection_split"] == "test"
    check_curve(interpolation["points"], alpha, tolerance=0.0, total=len(test),
                before=result["before"])
    assert_count_over(result["after"]["clean_accuracy"], len(test), "after")

    # 4. The fine-tuning's epoch was chosen on the validation split: the best epoch's reported
    #    accuracy is θ_FT's there (its test accuracy would say the test split decided).
    finetuned = _loaded(config, splits.image_shape, out["finetuned"])
    epochs = result["finetune"]["epochs"]
    assert epochs[best_epoch - 1]["val_accuracy"] == percent_of(
        clean_correct(finetuned, splits.validation.images, splits.validation.labels))
    assert best_epoch == 1 + max(range(len(epochs)), key=lambda i: (epochs[i]["val_accuracy"], -i))

    # 3. MRC: the table's arithmetic, and its losses reproduced on the MRC set made here (the
    #    whole training split, PGD without random start on θ_AT).
    mrc = result["mrc"]
    check_mrc_table(mrc, module)
    assert mrc["selected_module"] == module  # no finetune.module: the lowest MRC is tuned
    assert mrc["examples"] == len(splits.train)
    images = robust_set(theta_at, splits.train.images, splits.train.labels, attack)
    labels = splits.train.labels
    baseline, baseline_accuracy = mean_loss_and_accuracy(theta_at, images, labels)
    assert math.isclose(mrc["baseline_robust_loss"], baseline, rel_tol=1e-4)
    assert mrc["baseline_robust_accuracy"] == baseline_accuracy
    for row in mrc["rows"]:
        weight = theta_at.get_submodule(row["name"]).weight
        reached, accuracy, widest = relative_ball_ascent(
            theta_at, weight, images, labels, eps=0.1, steps=3, lr=1.0, batch=128)
        assert widest <= 0.1 * (1 + 1e-6)
        assert math.isclose(row["max_ascent_loss"], reached, rel_tol=1e-4), (row, reached)
        worst = max(baseline, reached)
        assert math.isclose(row["worst_robust_loss"], worst, rel_tol=1e-4), row
        if reached > baseline:
            assert row["robust_accuracy_at_worst"] == accuracy, row
    # For the chosen module, a longer full-batch search in the same ball reaches at least the
    # reported worst loss: the table's value is a loss at a point of the ball, a lower bound of
    # the maximum, not above what the ball holds.
    chosen = next(row for row in mrc["rows"] if row["name"] == module)
    longer, _, widest = relative_ball_ascent(
        theta_at, theta_at.get_submodule(module).weight, images, labels, eps=0.1, steps=20,
        lr=0.5, batch=len(labels), decay=0.9)
    assert widest <= 0.1 * (1 + 1e-6)
    assert max(longer, baseline) >= chosen["worst_robust_loss"] * (1 - 1e-4), (chosen, longer)


def robust_set(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
               attack: PlainPGD) -> torch.Tensor:
    """The MRC set as the docs define it: PGD on θ_AT in eval mode, kept fixed."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    adversarial = attack.attack(model, as_pixels(images), labels)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return adversarial


def _resnet_upload(config: RiftConfig, folder: Path) -> Path:
    """A ResNet-18 θ_AT with random weights and random BatchNorm statistics, saved as a training
    script running DataParallel saves it: ``torch.save({"epoch", "state_dict"})`` with every
    key under ``module.``."""
    torch.manual_seed(1)
    model = with_running_statistics(build_model(config.architecture, in_channels=3, image_size=8),
                                    seed=1)
    for name, buffer in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            buffer.fill_(391)  # a counter a real training leaves
    path = folder / "rn18_dp.pt"
    torch.save({"epoch": 7, "state_dict": {f"module.{key}": value for key, value in
                                            model.state_dict().items()}}, path)
    return path


@pytest.mark.slow  # ResNet-18: about 10 s on two loaded cores
def test_resnet_dataparallel_upload_with_frozen_statistics_checks_out(tmp_path: Path) -> None:
    base = random_images_config(tmp_path, "resnet18", tuned="layer4.1.conv2", step_size=0.01,
                                lr=0.5, mrc={"steps": 2, "modules": ["layer4.1.conv2", "linear"]})
    raw = base.model_dump(mode="json")
    raw["architecture"]["normalization"] = "cifar10"
    raw["attack"]["random_start"] = False
    raw["finetune"].update(module=None, bn_stats="freeze", batch_size=8)
    raw["interpolation"].update(selection_split="validation", curve="full")
    # Each evaluation measures the first 7 examples of its split (both splits hold about 10).
    raw["evaluation"].update(fold_batchnorm="auto", max_examples=7)
    config = RiftConfig.model_validate(raw)
    upload_path = _resnet_upload(config, tmp_path)
    result = run_pipeline(config, upload_path, tmp_path / "out")
    out = _outputs(tmp_path / "out")
    splits = load_dataset(config.dataset, config.seed)
    alpha, module = result["chosen_alpha"], result["selected_module"]
    upload = read_user_checkpoint(upload_path)
    assert all(key.startswith("module.") for key in upload)

    # 1. Keys without "module." (documented: the architecture's state-dict keys), BatchNorm
    #    statistics and counters exactly θ_AT's (frozen), every other entry θ_AT's.
    assert set(out["tuned"]) == {key.removeprefix("module.") for key in upload}
    check_weights(_fresh_model(config, splits.image_shape), upload, out["tuned"],
                  out["finetuned"], WeightsExpectation(
                      module, alpha, "freeze", _batches_per_epoch(len(splits.train), 8),
                      result["finetune"]["best_epoch"]))

    # 4. The splits are the npz's images, without overlap: train + validation + test = x.
    x = np.load(tmp_path / "d.npz")["x"].transpose(0, 3, 1, 2)
    parts = (splits.train.images, splits.validation.images, splits.test.images)
    assert same_examples(torch.cat(parts), torch.from_numpy(np.ascontiguousarray(x)))

    # 2 and 5. The α curve on the validation split, before/after on the test split, with the
    #    BatchNorm-folded evaluation ("auto") against a plain unfolded PGD.
    upload_state = {key.removeprefix("module."): value for key, value in upload.items()}
    theta_at = _loaded(config, splits.image_shape, upload_state)
    tuned = _loaded(config, splits.image_shape, out["tuned"])
    attack = PlainPGD(config.attack.eps, config.attack.step_size, config.attack.steps)
    interpolation = result["interpolation"]
    assert interpolation["selection_split"] == "validation"
    assert len(splits.validation) > 7 and len(splits.test) > 7
    validation = splits.validation.head(7)
    points = interpolation["points"]
    check_curve(points, alpha, tolerance=0.0, total=7, before=None)
    chosen = next(p for p in points if p["alpha"] == alpha)
    for model, point in ((theta_at, points[0]), (tuned, chosen)):
        assert point["clean_accuracy"] == percent_of(
            clean_correct(model, validation.images, validation.labels))
        assert point["robust_accuracy"] == percent_of(
            robust_correct(model, validation.images, validation.labels, attack))
    test = splits.test.head(7)
    for model, reported in ((theta_at, result["before"]), (tuned, result["after"])):
        assert reported == {"clean_accuracy": percent_of(
                                clean_correct(model, test.images, test.labels)),
                            "robust_accuracy": percent_of(
                                robust_correct(model, test.images, test.labels, attack))}

    # 3. The table's arithmetic.
    check_mrc_table(result["mrc"], module)
    assert result["mrc"]["selected_module"] == module


def test_reference_protocol_with_random_starts_checks_out(digits_checkpoint_path: Path,
                                                          tmp_path: Path) -> None:
    raw = _digits_config(attack={"random_start": True}, finetune={"lr": 0.05})
    # The protocol sets these itself (10 MRC passes, α steps of 0.1).
    del raw["mrc"]["steps"], raw["interpolation"]["alpha_step"]
    raw["protocol"] = "reference"
    config = RiftConfig.model_validate(raw)
    result = run_pipeline(config, digits_checkpoint_path, tmp_path / "out")
    out = _outputs(tmp_path / "out")
    splits = load_dataset(config.dataset, config.seed)
    upload = read_user_checkpoint(digits_checkpoint_path)
    alpha, module = result["chosen_alpha"], result["selected_module"]
    best_epoch = result["finetune"]["best_epoch"]

    # 4. Fine-tuning trained on training + validation (its BatchNorm counters count those
    #    batches) and kept the epoch best on the test split (docs/algorithm.md, reference).
    trained_on = len(splits.train) + len(splits.validation)
    check_weights(_fresh_model(config, splits.image_shape), upload, out["tuned"], out["finetuned"],
                  WeightsExpectation(module, alpha, "update",
                                     _batches_per_epoch(trained_on, 64), best_epoch))
    finetuned = _loaded(config, splits.image_shape, out["finetuned"])
    assert result["finetune"]["epochs"][best_epoch - 1]["val_accuracy"] == percent_of(
        clean_correct(finetuned, splits.test.images, splits.test.labels))
    # The MRC set is the test split (all 120 of it); negative MRC values are allowed.
    assert result["mrc"]["examples"] == len(splits.test)
    check_mrc_table(result["mrc"], module, allow_negative=True)
    assert result["mrc"]["selected_module"] == module

    # 2. Random starts: the reported robust count lies between the counts of examples robust
    #    under every one of 8 independent restarts and under at least one of them. The library
    #    draws one more start per example; it can leave that range only by finding (or missing)
    #    an adversarial example that all 8 restarts missed (found).
    test = splits.test
    attack = PlainPGD(0.1, 0.025, 5)
    tuned = _loaded(config, splits.image_shape, out["tuned"])
    theta_at = _loaded(config, splits.image_shape, {**out["finetuned"], **upload})
    for model, reported in ((theta_at, result["before"]), (tuned, result["after"])):
        restarts = torch.stack([robust_correct(model, test.images, test.labels, attack, seed=s)
                                for s in range(8)])
        low, high = int(restarts.all(0).sum()), int(restarts.any(0).sum())
        count = assert_count_over(reported["robust_accuracy"], len(test), "robust")
        assert low <= count <= high, (low, count, high)
        assert reported["clean_accuracy"] == percent_of(
            clean_correct(model, test.images, test.labels))
    check_curve(result["interpolation"]["points"], alpha, tolerance=0.1, total=len(test),
                before=result["before"])


def test_the_checker_catches_a_wrong_mixture(digits_checkpoint_path: Path) -> None:
    """The weights check fails on weights that are not the documented mixture: BatchNorm
    statistics left at θ_AT under "update", or a frozen layer moved."""
    config = RiftConfig.model_validate(_digits_config())
    upload = read_user_checkpoint(digits_checkpoint_path)
    finetuned = copy.deepcopy(upload)
    finetuned["fc.weight"] = finetuned["fc.weight"] + 0.01
    finetuned["bn1.running_mean"] = finetuned["bn1.running_mean"] + 0.01
    finetuned["bn1.num_batches_tracked"] = finetuned["bn1.num_batches_tracked"] + 4
    finetuned["bn2.num_batches_tracked"] = finetuned["bn2.num_batches_tracked"] + 4
    finetuned["bn3.num_batches_tracked"] = finetuned["bn3.num_batches_tracked"] + 4
    expect = WeightsExpectation("fc", 0.5, "update", 4, 1)
    mixed = {key: (0.5 * upload[key] + 0.5 * finetuned[key]) if upload[key].is_floating_point()
             else upload[key].clone() for key in upload}
    with pytest.raises(AssertionError, match="running statistics not updated"):
        check_weights(_fresh_model(config, (1, 8, 8)), upload, mixed, finetuned, expect)
    for key in ("bn2.running_mean", "bn3.running_mean", "bn2.running_var", "bn3.running_var",
                "bn1.running_var"):
        finetuned[key] = finetuned[key] + 0.01
    mixed = {key: (0.5 * upload[key] + 0.5 * finetuned[key]) if upload[key].is_floating_point()
             else upload[key].clone() for key in upload}
    check_weights(_fresh_model(config, (1, 8, 8)), upload, mixed, finetuned, expect)
    mixed["conv1.weight"] = mixed["conv1.weight"] + 1e-3
    with pytest.raises(AssertionError, match=r"conv1\.weight differs"):
        check_weights(_fresh_model(config, (1, 8, 8)), upload, mixed, finetuned, expect)


def test_l2_attack_numbers_check_out(digits_checkpoint_path: Path, tmp_path: Path) -> None:
    """The L2 attack's robust accuracies, against a plain L2 PGD (no random start: exact)."""
    raw = _digits_config(attack={"norm": "l2", "eps": 0.5, "step_size": 0.2, "steps": 4},
                         mrc={"steps": 1}, finetune={"epochs": 1},
                         interpolation={"alpha_step": 0.5})
    config = RiftConfig.model_validate(raw)
    result = run_pipeline(config, digits_checkpoint_path, tmp_path / "out")
    out = _outputs(tmp_path / "out")
    splits = load_dataset(config.dataset, config.seed)
    test = splits.test
    attack = PlainPGD(0.5, 0.2, 4, norm="l2")
    upload = read_user_checkpoint(digits_checkpoint_path)
    for state, reported in ((upload, result["before"]), (out["tuned"], result["after"])):
        model = _loaded(config, splits.image_shape, state)
        assert reported == {"clean_accuracy": percent_of(
                                clean_correct(model, test.images, test.labels)),
                            "robust_accuracy": percent_of(
                                robust_correct(model, test.images, test.labels, attack))}
    check_curve(result["interpolation"]["points"], result["chosen_alpha"], tolerance=0.0,
                total=len(test), before=result["before"])


@pytest.mark.parametrize("options", [
    {"engine": "full"}, {"engine": "cached", "module_batch": 2}, {"table": "selection"},
    {"ascent": "sgd", "lr": 1.0}])
def test_mrc_rows_replay_inside_the_ball(digits_checkpoint_path: Path,
                                         options: dict[str, Any]) -> None:
    """Every row of the MRC stage, whatever engine computed it, is the documented ascent
    replayed here for the row's passes (a row stopped early by ``table: "selection"`` replays
    its own passes, a lower bound of the full row), each measured point inside the ball."""
    from rift.pipeline import prepare_run, run_mrc_stage

    config = RiftConfig.model_validate(_digits_config(mrc={"steps": 3, "batch_size": 128,
                                                           **options}))
    run = prepare_run(config, digits_checkpoint_path)
    mrc = run_mrc_stage(run).to_json()
    check_mrc_table(mrc, mrc["selected_module"])
    splits = load_dataset(config.dataset, config.seed)
    theta_at = _loaded(config, splits.image_shape, read_user_checkpoint(digits_checkpoint_path))
    labels = splits.train.labels
    images = robust_set(theta_at, splits.train.images, labels, PlainPGD(0.1, 0.025, 5))
    baseline, _ = mean_loss_and_accuracy(theta_at, images, labels)
    assert math.isclose(mrc["baseline_robust_loss"], baseline, rel_tol=1e-4)
    for row in mrc["rows"]:
        weight = theta_at.get_submodule(row["name"]).weight
        if options.get("ascent") == "sgd":
            replay = sgd_ball_ascent(theta_at, weight, images, labels, passes=row["passes"])
        else:
            replay, _, _ = relative_ball_ascent(theta_at, weight, images, labels, eps=0.1,
                                                steps=row["passes"], lr=1.0, batch=128)
        assert math.isclose(row["max_ascent_loss"], replay, rel_tol=1e-4), (row, replay)
        assert row["exact"] == (row["passes"] == 3), row


def sgd_ball_ascent(model: nn.Module, weight: nn.Parameter, images: torch.Tensor,
                    labels: torch.Tensor, *, passes: int) -> float:
    """The reference rule: W += lr·g per batch of 128 (lr 1), projected onto the relative L2 ball
    (ε = 0.1) after each pass; the largest loss measured after a pass."""
    original = weight.detach().clone()
    radius = 0.1 * float(original.norm())
    best = -math.inf
    for parameter in model.parameters():
        parameter.requires_grad_(parameter is weight)
    try:
        for _ in range(passes):
            for start in range(0, len(labels), 128):
                loss = torch.nn.functional.cross_entropy(model(images[start:start + 128]),
                                                         labels[start:start + 128])
                (grad,) = torch.autograd.grad(loss, weight)
                with torch.no_grad():
                    weight.add_(grad)
            with torch.no_grad():
                delta = weight - original
                norm = float(delta.norm())
                weight.copy_(original + (delta * (radius / norm) if norm > radius else delta))
            best = max(best, mean_loss_and_accuracy(model, images, labels)[0])
    finally:
        with torch.no_grad():
            weight.copy_(original)
    return best


def test_the_test_split_does_not_reach_mrc_or_fine_tuning(digits_checkpoint_path: Path,
                                                         tmp_path: Path) -> None:
    """Two runs whose data differ only in the test split (``x_test``/``y_test`` of an npz: the
    digits, then noise with shuffled labels) give bit-identical MRC tables and θ_FT: with the
    default splits neither stage sees a test image. Only the α curve, measured on the test split,
    may differ."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[..., None]  # N×8×8×1
    labels = bunch.target.astype(np.int64)
    noise = np.random.default_rng(0).integers(0, 256, (120, 8, 8, 1), dtype=np.uint8)
    tests = {"digits": (images[300:420], labels[300:420]),
             "noise": (noise, np.random.default_rng(1).permutation(labels[300:420]))}
    outputs = {}
    for name, (x_test, y_test) in tests.items():
        np.savez(tmp_path / f"{name}.npz", x=images[:300], y=labels[:300], x_test=x_test,
                 y_test=y_test)
        config = RiftConfig.model_validate(_digits_config(
            dataset={"name": "npz", "path": str(tmp_path / f"{name}.npz"),
                     "validation_fraction": 0.2, "max_train_examples": None,
                     "max_test_examples": None},
            mrc={"steps": 1}, finetune={"epochs": 2}, interpolation={"alpha_step": 1.0}))
        result = run_pipeline(config, digits_checkpoint_path, tmp_path / name)
        outputs[name] = (result, read_safetensors(
            (tmp_path / name / "finetuned.safetensors").read_bytes())[0])
    (first, first_ft), (second, second_ft) = outputs.values()
    assert [row["max_ascent_loss"] for row in first["mrc"]["rows"]] == [
        row["max_ascent_loss"] for row in second["mrc"]["rows"]]
    assert first["mrc"]["baseline_robust_loss"] == second["mrc"]["baseline_robust_loss"]
    assert [e["val_accuracy"] for e in first["finetune"]["epochs"]] == [
        e["val_accuracy"] for e in second["finetune"]["epochs"]]
    assert all(torch.equal(first_ft[key], second_ft[key]) for key in first_ft)
    assert first["before"] != second["before"]  # the test split itself did change


def test_feature_vector_numbers_check_out_in_an_unbounded_domain(tmp_path: Path) -> None:
    """Standardised features (z-scores) with ``attack.domain: "auto"``: no bounds, so the plain
    PGD clamps nothing; [0, 1] clamping would give other counts (the check has teeth)."""
    from rift.demo_tabular import (
        make_tabular_checkpoint,
        tabular_demo_config,
        write_breast_cancer_npz,
    )

    npz = write_breast_cancer_npz(tmp_path / "bc.npz")
    make_tabular_checkpoint(tmp_path / "mlp.safetensors", npz, epochs=3)
    raw = tabular_demo_config(npz)
    raw["attack"].update(domain="auto", random_start=False)
    raw["mrc"].update(steps=1, num_examples=64)
    raw["finetune"].update(epochs=1, lr_milestones=[])
    raw["interpolation"]["alpha_step"] = 0.5
    raw["preflight"] = {"examples": 0}
    config = RiftConfig.model_validate(raw)
    result = run_pipeline(config, tmp_path / "mlp.safetensors", tmp_path / "out")
    out = _outputs(tmp_path / "out")
    splits = load_dataset(config.dataset, config.seed)
    test = splits.test
    assert test.images.shape[1:] == (30, 1, 1)
    unbounded = PlainPGD(0.25, 0.0625, 10, lower=None, upper=None)
    upload = read_user_checkpoint(tmp_path / "mlp.safetensors")
    for state, reported in ((upload, result["before"]), (out["tuned"], result["after"])):
        model = _loaded(config, splits.image_shape, state)
        robust = robust_correct(model, test.images, test.labels, unbounded)
        assert reported == {"clean_accuracy": percent_of(
                                clean_correct(model, test.images, test.labels)),
                            "robust_accuracy": percent_of(robust)}
    clamped = robust_correct(model, test.images, test.labels, PlainPGD(0.25, 0.0625, 10))
    assert not torch.equal(clamped, robust)
