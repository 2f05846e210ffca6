"""The job spec (RiftConfig): what it refuses, so bad values fail at once and not on a worker."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rift.config import RiftConfig

BASE = {"architecture": {"name": "resnet18"}, "dataset": {"name": "cifar10"}}


def _errors(**changes: object) -> set[str]:
    with pytest.raises(ValidationError) as error:
        RiftConfig.model_validate({**BASE, **changes})
    return {".".join(str(part) for part in e["loc"]) for e in error.value.errors()}


def test_defaults_follow_the_reference_protocol() -> None:
    config = RiftConfig.model_validate(BASE)
    assert config.attack.eps == pytest.approx(8 / 255) and config.attack.steps == 10
    assert config.mrc.eps == 0.1 and config.mrc.p == 2 and config.mrc.lr == 1.0
    assert config.mrc.steps == 10 and config.mrc.batch_size == 512
    assert config.finetune.lr == 1e-3 and config.finetune.epochs == 10
    assert config.finetune.lr_milestones == [5] and config.finetune.batch_size == 128
    assert config.interpolation.alpha_step == 0.05 and config.deterministic


@pytest.mark.parametrize(("changes", "field"), [
    ({"attack": {"eps": float("inf")}}, "attack.eps"),
    ({"mrc": {"lr": float("nan")}}, "mrc.lr"),
    ({"architecture": {"name": "resnet18", "mean": [float("inf")] * 3, "std": [1.0] * 3}},
     "architecture.mean.0"),
    ({"architecture": {"name": "resnet18", "mean": [0.0], "std": [1e-300]}}, "architecture"),
    ({"architecture": {"name": "resnet18", "mean": [0.0]}}, "architecture"),
    ({"interpolation": {"alpha_step": 1e-5}}, "interpolation.alpha_step"),
    ({"device": "cuda:\u00b2"}, "device"),
    ({"device": "gpu"}, "device"),
    ({"finetune": {"lr_milestones": [5, 3]}}, "finetune.lr_milestones"),
    ({"mrc": {"stepz": 3}}, "mrc.stepz"),
    ({"dataset": {"name": "npz"}}, "dataset"),
    # "" ran as "not given" (the lowest-MRC module) in a single run, as a name in a sweep.
    ({"finetune": {"module": ""}}, "finetune.module"),
    ({"finetune": {"module": "  "}}, "finetune.module"),
    # Options the source would ignore: an npz "resized" to 32 px ran at its stored size.
    ({"dataset": {"name": "npz", "path": "d.npz", "image_size": 32}}, "dataset.image_size"),
    ({"dataset": {"name": "cifar10", "image_size": 32}}, "dataset.image_size"),
])
def test_bad_values_name_their_field(changes: dict, field: str) -> None:
    assert field in _errors(**changes)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:7", "mps"])
def test_device_names(device: str) -> None:
    assert RiftConfig.model_validate({**BASE, "device": device}).device == device


@pytest.mark.parametrize(("changes", "field"), [
    # Before: read as 1 (one ascent pass, a milestone after epoch 1, seed 0) without a word.
    ({"mrc": {"steps": True}}, "mrc.steps"),
    ({"finetune": {"lr_milestones": [True]}}, "finetune.lr_milestones"),
    ({"seed": False}, "seed"),
    ({"mrc": {"p": True}}, "mrc.p"),
])
def test_booleans_are_not_numbers(changes: dict, field: str) -> None:
    assert field in _errors(**changes)
    config = RiftConfig.model_validate({**BASE, "attack": {"random_start": False},
                                        "channels_last": True})
    assert config.attack.random_start is False and config.channels_last is True


def test_module_names_given_as_whole_numbers_are_their_text() -> None:
    # nn.Sequential names its children "0", "1", ...: before, [0, 4] from JSON, YAML or --set was
    # refused "Input should be a valid string", saying neither why nor to quote them.
    config = RiftConfig.model_validate({**BASE, "mrc": {"modules": [0, 4], "include": [1, "x*"],
                                                        "exclude": [2]},
                                        "finetune": {"module": 4}})
    assert (config.mrc.modules, config.mrc.include, config.mrc.exclude) == (
        ["0", "4"], ["1", "x*"], ["2"])
    assert config.finetune.module == "4"
    assert "mrc.modules" in _errors(mrc={"modules": [0, "0"]})  # still each module once
    assert "mrc.modules" in _errors(mrc={"modules": [True]})  # true is no name


@pytest.mark.parametrize(("changes", "field"), [
    ({"mrc": {"modules": ["0", 4.10]}}, "mrc.modules"),
    ({"finetune": {"module": 4.10}}, "finetune.module"),
])
def test_a_fractional_module_name_asks_for_quotes(changes: dict, field: str) -> None:
    # "4.10" (child "10" of child "4") read as a number is 4.1: its text would name another module.
    with pytest.raises(ValidationError) as error:
        RiftConfig.model_validate({**BASE, **changes})
    [problem] = error.value.errors()
    assert ".".join(map(str, problem["loc"])) == field
    assert problem["msg"] == ("module names are text, and a number may lose digits (4.10 reads "
                              "as 4.1): quote it")


def test_one_class_names_the_single_logit_head_and_its_fix() -> None:
    """Before: "Input should be greater than or equal to 2" only."""
    with pytest.raises(ValidationError, match=r"num_classes 1: a single-logit binary head.*"
                       r"set num_classes 2"):
        RiftConfig.model_validate({"architecture": {"name": "small_cnn", "num_classes": 1},
                                   "dataset": {"name": "digits"}})


def test_mrc_p_follows_the_integer_rules_and_its_errors_name_the_field_once() -> None:
    """``mrc.p`` is the order of the norm of the weight ball: the integer 2 or the text 'inf'.
    Before: a ``Literal[2, "inf"]``, which matches 2.0 by equality even in a strict parse, so a
    JSON config's ``2.0`` was read as 2 where ``mrc.steps: 2.0`` is refused. Now 2.0 follows the
    integer rule in both parses: refused in strict JSON (the API, a ``--config`` file), taken
    as 2 from a Python dict (as ``mrc.steps`` is)."""
    import json

    strict = {**BASE, "mrc": {"p": 2.0}}
    with pytest.raises(ValidationError) as refused:
        RiftConfig.model_validate_json(json.dumps(strict), strict=True)
    (error,) = refused.value.errors()  # one error, at the field itself (no union member tag)
    assert error["loc"] == ("mrc", "p") and error["type"] == "int_type"
    with pytest.raises(ValidationError):
        RiftConfig.model_validate_json(json.dumps({**BASE, "mrc": {"steps": 2.0}}), strict=True)
    assert RiftConfig.model_validate(strict).mrc.p == 2
    assert RiftConfig.model_validate({**BASE, "mrc": {"steps": 2.0}}).mrc.steps == 2
    for wrong in (1, 3, 2.5, "Inf", float("inf"), None):
        assert _errors(mrc={"p": wrong}) == {"mrc.p"}
    assert RiftConfig.model_validate({**BASE, "mrc": {"p": "inf"}}).mrc.p == "inf"


def test_a_dataset_location_the_dataset_does_not_read_is_an_unused_setting() -> None:
    """Before: ``--dataset digits --data-path mine.npz`` ran on the digits, the file never
    opened; ``root`` beside an npz was dropped the same way."""
    from rift.config import unused_settings

    def unused(**dataset: object) -> list[tuple[str, ...]]:
        return [path for path, _ in unused_settings({"dataset": dataset})]

    assert unused(name="digits", path="mine.npz") == [("dataset", "path")]
    assert unused(name="cifar10", root="/data", path="x") == [("dataset", "path")]
    assert unused(name="npz", path="x.npz", root="/data") == [("dataset", "root")]
    assert unused(name="digits", root="/data") == [("dataset", "root")]
    assert unused(name="npz", path="x.npz") == unused(name="cifar10", root="/d") == []
    assert unused(name="digits", path=None, root=None) == unused(name="cifar-10", path="x") == []
