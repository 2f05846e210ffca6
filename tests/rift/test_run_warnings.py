"""Risky settings are ``warning`` events naming the setting, once per run (rift/run_warnings.py):
decisions on too few examples, bf16 on the CPU, learning-rate milestones that never act."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from rift.attacks import PGD
from rift.config import RiftConfig
from rift.data import DatasetSplits, load_dataset
from rift.errors import DatasetError
from rift.pipeline import PipelineCallbacks, prepare_run, run_preflight_stage
from rift.run_warnings import RunWarning, configuration_warnings

CPU = torch.device("cpu")


def _config(base: dict[str, Any], **sections: dict[str, Any]) -> RiftConfig:
    raw = copy.deepcopy(base)
    for section, values in sections.items():
        if isinstance(raw.get(section), dict):
            raw[section].update(values)
        else:
            raw[section] = values
    return RiftConfig.model_validate(raw)


def _warnings(config: RiftConfig, device: torch.device = CPU) -> list[RunWarning]:
    splits: DatasetSplits = load_dataset(config.dataset, config.seed)
    return configuration_warnings(config, splits, device)


def test_the_demo_job_and_the_quick_test_jobs_are_quiet(digits_job_config: dict) -> None:
    assert _warnings(RiftConfig.model_validate(digits_job_config)) == []
    # The service tests' quick job (tests/worker_jobs.py).
    assert _warnings(_config(digits_job_config, mrc={"num_examples": 64},
                             finetune={"epochs": 3, "lr_milestones": [2]},
                             evaluation={"max_examples": 128})) == []


def test_alpha_chosen_on_fewer_test_examples_than_classes(digits_job_config: dict) -> None:
    config = _config(digits_job_config, dataset={"max_test_examples": 5})
    assert _warnings(config) == [RunWarning("interpolate", (
        "α is chosen on 5 test examples (dataset.max_test_examples=5), fewer than the 10 "
        "classes: accuracies move in steps of 20 percentage points; use at least 100"))]


def test_alpha_chosen_on_fewer_than_a_hundred_names_the_cap_that_applied(
        digits_job_config: dict) -> None:
    config = _config(digits_job_config, dataset={"max_test_examples": 300},
                     evaluation={"max_examples": 64})
    [warning] = _warnings(config)
    assert warning.message.startswith(
        "α is chosen on 64 test examples (evaluation.max_examples=64), fewer than 100: "
        "accuracies move in steps of 1.56 percentage points")


def test_validation_selection_names_the_fraction_and_the_training_cap(
        digits_job_config: dict) -> None:
    config = _config(digits_job_config, dataset={"max_train_examples": 200},
                     interpolation={"selection_split": "validation"})
    warnings = _warnings(config)
    origin = "(dataset.validation_fraction=0.2 of dataset.max_train_examples=200)"
    assert [w.stage for w in warnings] == ["finetune", "interpolate"]
    assert warnings[0].message.startswith(
        f"the best fine-tuning epoch is chosen on 40 validation examples {origin}, fewer than "
        "100: accuracies move in steps of 2.5 percentage points")
    assert warnings[1].message.startswith(f"α is chosen on 40 validation examples {origin}")
    # One epoch is kept whatever its accuracy: nothing to choose, nothing to say.
    one_epoch = config.model_copy(update={"finetune": config.finetune.model_copy(
        update={"epochs": 1, "lr_milestones": []})})
    assert [w.stage for w in _warnings(one_epoch)] == ["interpolate"]


def test_an_mrc_set_smaller_than_the_classes(digits_job_config: dict) -> None:
    config = _config(digits_job_config, mrc={"num_examples": 6})
    assert _warnings(config) == [RunWarning("mrc", (
        "MRC scores modules on 6 adversarial examples (mrc.num_examples=6), fewer than the 10 "
        "classes: the table cannot see how every class reacts; use mrc.num_examples >= 10"))]
    assert _warnings(_config(digits_job_config, mrc={"num_examples": 10})) == []


def test_bf16_on_the_cpu(digits_job_config: dict) -> None:
    config = _config(digits_job_config, precision="bf16")
    [warning] = _warnings(config)
    assert warning.stage == "run" and warning.message.startswith("precision 'bf16' on the CPU")
    # Only the device type matters: no GPU is needed to see that a CUDA run is quiet.
    assert _warnings(config, torch.device("cuda")) == []


def test_milestones_that_never_act_are_named_unless_they_are_the_default(
        digits_job_config: dict) -> None:
    config = _config(digits_job_config, finetune={"epochs": 5, "lr_milestones": [2, 5, 8]})
    assert _warnings(config) == [RunWarning("finetune", (
        "finetune.lr_milestones [5, 8] never take effect: a milestone m lowers the learning "
        "rate from epoch m + 1 and finetune.epochs is 5"))]
    # The same after the service's round trip (a full dump, every field set).
    assert _warnings(RiftConfig.model_validate(config.model_dump(mode="json"))) == \
        _warnings(config)
    # The default [5], left out or written out (as the service stores every config), is quiet.
    left_out = RiftConfig.model_validate({**digits_job_config, "finetune": {"epochs": 3}})
    assert left_out.finetune.lr_milestones == [5] and _warnings(left_out) == []
    assert _warnings(_config(digits_job_config,
                             finetune={"epochs": 3, "lr_milestones": [5]})) == []


def test_the_warnings_are_events_before_the_preflight_check(
        digits_checkpoint_path: Path, digits_job_config: dict) -> None:
    # preflight.examples 0 skips the accuracy check; the warnings still come.
    config = _config(digits_job_config, dataset={"max_test_examples": 5},
                     preflight={"examples": 0})
    run = prepare_run(config, digits_checkpoint_path)
    events: list[tuple[str, dict]] = []
    assert run_preflight_stage(run, PipelineCallbacks(
        on_event=lambda kind, data: events.append((kind, data)))) is None
    assert [(kind, data["stage"]) for kind, data in events] == [("warning", "interpolate")]
    assert events[0][1]["message"].startswith("α is chosen on 5 test examples "
                                              "(dataset.max_test_examples=5)")


def _npz_config(path: Path, **arrays: Any) -> RiftConfig:
    import numpy as np

    np.savez(path, **arrays)
    return RiftConfig.model_validate({"architecture": {"name": "small_cnn"},
                                      "dataset": {"name": "npz", "path": str(path)}})


def _images(n: int) -> Any:
    import numpy as np

    return np.random.default_rng(0).integers(2, 256, (n, 8, 8), dtype=np.uint8)


def test_classes_a_split_lacks_are_named(tmp_path: Path) -> None:
    import numpy as np

    # A test file of one class: α would be chosen on class 0 alone.
    config = _npz_config(tmp_path / "a.npz", x=_images(20), y=np.arange(20) % 2,
                         x_test=_images(4), y_test=np.zeros(4, np.int64))
    assert RunWarning("interpolate", (
        "α is chosen on 4 test examples, all of class 0, of the 2 classes the data uses: the "
        "accuracies α is chosen by say nothing of the others")) in _warnings(config)
    # Test labels the training file never has (5): fine-tuning cannot learn them.
    config = _npz_config(tmp_path / "b.npz", x=_images(20), y=np.arange(20) % 3,
                         x_test=_images(6), y_test=np.array([0, 1, 2, 5, 5, 5]))
    found = _warnings(config)
    assert RunWarning("finetune", ("the training split has no example of class(es) 5, which "
                                   "the test split holds: fine-tuning never sees them")) in found
    assert not any("α is chosen on 6 test examples," in w.message for w in found)
    # Training labels of one class are refused when the data is loaded (rift.image_content,
    # the rule of an upload); the test labels of one class are the warning above.
    config = _npz_config(tmp_path / "c.npz", x=_images(20), y=np.full(20, 3))
    with pytest.raises(DatasetError, match="every training label is 3"):
        _warnings(config)


def test_an_attack_weaker_than_its_eps_is_named(digits_job_config: dict) -> None:
    def attack_warnings(**attack: Any) -> list[str]:
        config = _config(digits_job_config, attack=attack)
        return [w.message for w in _warnings(config) if w.message.startswith("attack.")]

    # With a random start too (the demo's): PGD returns the clean inputs, so the warning says
    # so (it said "plus uniform noise", which no evaluation added).
    assert attack_warnings(steps=0) == [
        "attack.steps is 0: the attack takes no step, so every robust accuracy of the run is the "
        "accuracy on clean inputs, and MRC and the α rule judge no attack"]
    images = torch.rand(2, 1, 8, 8)
    assert torch.equal(PGD(eps=0.1, step_size=0.025, steps=0, random_start=True).perturb(
        nn.Identity(), images, torch.zeros(2, dtype=torch.int64)), images)
    assert attack_warnings(eps=0.0)[0].startswith(
        "attack.eps is 0: the attack takes no step, so every robust accuracy of the run is the "
        "accuracy on clean inputs,")
    # 2 × 0.025 = 0.05 < 0.1: the edge of the ball is out of reach.
    assert attack_warnings(steps=2)[0].startswith(
        "attack.steps × attack.step_size = 2 × 0.025 = 0.05 is less than attack.eps 0.1")
    assert attack_warnings(steps=4) == []  # 4 × 0.025 reaches 0.1


def test_class_folders_named_by_numbers_in_text_order_are_named(tmp_path: Path) -> None:
    from PIL import Image

    def tree(names: list[str]) -> RiftConfig:
        root = tmp_path / names[0]
        for index, name in enumerate(names):
            for i in range(2):
                (root / name).mkdir(parents=True, exist_ok=True)
                image = Image.new("L", (8, 8), 20 * index + i)
                image.putpixel((0, 0), 255)  # a constant image is refused as content
                image.save(root / name / f"{i}.png")
        return RiftConfig.model_validate({"architecture": {"name": "small_cnn"}, "dataset": {
            "name": "imagefolder", "path": str(root)}})

    # Folders 1 to 10 are classes 1, 10, 2, …: folder '2' is class 2, not 1.
    [warning] = [w for w in _warnings(tree([str(n) for n in range(1, 11)]))
                 if "class folders are numbers" in w.message]
    assert warning.message.startswith(
        "the class folders are numbers, taken in text order as classes are: class 0 is '1', 1 "
        "is '10', 2 is '2', 3 is '3', …; a checkpoint trained with them in numeric order ('2' "
        "as class 1) sees other labels: rename them with leading zeros (01, 02, 03, …)")
    # Zero-padded (or fewer than ten) numbers sort alike both ways: nothing to say.
    padded = [f"{n:02d}" for n in range(1, 11)]
    assert not any("class folders" in w.message for w in _warnings(tree(padded)))


def test_a_head_wider_than_the_data_classes_is_named(digits_job_config: dict) -> None:
    wide = _config(digits_job_config, architecture={**digits_job_config["architecture"],
                                                    "num_classes": 1000})
    [warning] = _warnings(wide)
    assert warning.stage == "run"
    assert warning.message.startswith(
        "architecture.num_classes is 1000 but the data has 10 classes (labels 0 to 9): the "
        "model's other 990 outputs are classes no example holds")
    assert "set architecture.num_classes to 10" in warning.message


def test_alpha_chosen_on_the_examples_the_fine_tuning_trained_on(
        digits_job_config: dict) -> None:
    """finetune.selection_split 'test' trains on training + validation examples; choosing α on
    the validation split then measures the curve on θ_FT's training data, without a word."""
    leaky = _config(digits_job_config, finetune={"selection_split": "test"},
                    interpolation={"selection_split": "validation"})
    [warning] = _warnings(leaky)
    assert warning.stage == "interpolate"
    assert "which the fine-tuning trained on" in warning.message
    # Either split choice alone is quiet.
    assert _warnings(_config(digits_job_config, finetune={"selection_split": "test"})) == []
    assert _warnings(_config(digits_job_config,
                             interpolation={"selection_split": "validation"})) == []


def test_an_attack_radius_off_the_features_scale_is_named(tmp_path: Path) -> None:
    import numpy as np

    def scale_warnings(x: Any, **attack: Any) -> list[str]:
        path = tmp_path / "features.npz"
        np.savez(path, x=x, y=np.arange(len(x)) % 2)
        config = RiftConfig.model_validate({
            "architecture": {"name": "mlp", "num_classes": 2},
            "dataset": {"name": "npz", "path": str(path)}, "attack": attack})
        return [w.message for w in _warnings(config) if "features' typical range" in w.message]

    rng = np.random.default_rng(0)
    # Flattened 8-bit images saved as features (fetch_openml's MNIST: 0-255 floats), attacked
    # with the image radius 8/255: nothing moves by a grey level of their range.
    pixels = rng.integers(0, 256, (40, 64)).astype(np.float32)
    [message] = scale_warnings(pixels)
    assert message.startswith("attack.eps 0.03137 is less than 1/255 of the features' typical "
                              "range (")
    assert "these look like 8-bit pixel values: save the images as a uint8 array" in message
    assert scale_warnings(pixels, norm="l2", eps=0.5, step_size=0.1) != []  # same bound in L2
    # Measured values on a wide scale: told to standardise, not that they are pixels.
    wide = rng.normal(0, 1000, (40, 5))
    [message] = scale_warnings(wide, eps=0.1, step_size=0.025)
    assert message.endswith("standardise the features (eps is then in standard deviations) or "
                            "give attack.eps in their units")
    # Quiet: a radius on the features' scale, standardised features with the tabular demo's
    # radius, and a constant feature beside them (no scale to judge by).
    assert scale_warnings(pixels, eps=8.0, step_size=2.0) == []
    standardised = np.hstack([rng.normal(0, 1, (40, 5)), np.full((40, 1), 7.0)])
    assert scale_warnings(standardised, eps=0.25, step_size=0.0625, domain="none") == []


def test_features_in_the_unit_range_attacked_without_bounds_are_named(tmp_path: Path) -> None:
    """Features that all lie in [0, 1] (flattened [0, 1] images, binary columns) under
    ``attack.domain: "auto"``, which leaves feature vectors unbounded: PGD pushed them past 0
    and 1 with no word (the digits test images as 64 features: robust 59.0 % for 65.9 %)."""
    import numpy as np

    def domain_warnings(x: Any, **attack: Any) -> list[str]:
        path = tmp_path / "features.npz"
        np.savez(path, x=x, y=np.arange(len(x)) % 2)
        config = RiftConfig.model_validate({
            "architecture": {"name": "mlp", "num_classes": 2},
            "dataset": {"name": "npz", "path": str(path)}, "attack": attack})
        return [w.message for w in _warnings(config) if "keeps feature vectors unbounded"
                in w.message]

    rng = np.random.default_rng(0)
    pixels = rng.random((40, 64)).astype(np.float32)
    [message] = domain_warnings(pixels)
    assert message.startswith("every feature value lies in [0, 1] (training split: ")
    assert "set attack.domain 'unit'" in message
    assert domain_warnings(rng.integers(0, 2, (40, 8))) != []  # binary columns
    # Quiet: bounds chosen (none on purpose, or the box), values nowhere near 0 or 1 within
    # eps, and standardised features.
    assert domain_warnings(pixels, domain="none") == []
    assert domain_warnings(pixels, domain="unit") == []
    assert domain_warnings(pixels * 0.5 + 0.25) == []
    assert domain_warnings(rng.normal(0, 1, (40, 5)), eps=0.25, step_size=0.0625) == []


def test_an_image_domain_reaching_past_the_unit_range_is_named(digits_job_config: dict) -> None:
    """Images are read in [0, 1]; bounds in the normalised units the model sees (MNIST's range
    [-0.4242, 2.8215]) or "none" let PGD make inputs no image holds: the digits θ_AT scored
    PGD-10 robust 59.0 % so, against 65.9 % in [0, 1], with no word."""
    def domain_warnings(domain: Any) -> list[str]:
        config = _config(digits_job_config, attack={"domain": domain})
        return [w.message for w in _warnings(config) if "image values" in w.message]

    [message] = domain_warnings({"lower": [-0.4242], "upper": [2.8215]})
    assert message.startswith("attack.domain's bounds (from -0.4242 to 2.821) let PGD move "
                              "image values outside [0, 1]")
    assert "give the bounds in [0, 1] units" in message
    assert domain_warnings("none") != []
    assert domain_warnings("unit") == domain_warnings("auto") == []
    assert domain_warnings({"lower": [0.1], "upper": [0.9]}) == []
