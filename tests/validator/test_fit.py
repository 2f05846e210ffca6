"""The fit check (``validator/fit.py``): the model is built on the meta device for the dataset's
geometry, and a feature dataset's width reaches architectures that take it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rift.models
from rift.config import RiftConfig
from rift.errors import CheckpointMismatchError
from validator.fit import check_checkpoint_fits


def _config(name: str = "small_cnn") -> RiftConfig:
    return RiftConfig.model_validate({"architecture": {"name": name, "num_classes": 10},
                                      "dataset": {"name": "digits"}})


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def test_image_geometry_decides_the_first_layer() -> None:
    with torch.device("meta"):
        one_channel = rift.models.build_model(_config().architecture, in_channels=1,
                                              image_size=8)
    check_checkpoint_fits(_config(), _shapes(one_channel), in_channels=1, image_size=8)
    with pytest.raises(CheckpointMismatchError, match=r"conv1\.weight"):
        check_checkpoint_fits(_config(), _shapes(one_channel), in_channels=3, image_size=8)


def test_feature_count_is_passed_to_architectures_that_take_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, int] = {}

    def build_model(spec: object, *, in_channels: int = 3, image_size: int = 32,
                    num_features: int | None = None) -> nn.Module:
        seen.update(in_channels=in_channels, image_size=image_size, num_features=num_features or 0)
        return nn.Sequential(nn.Linear(num_features or 1, 10))

    monkeypatch.setattr(rift.models, "build_model", build_model)
    check_checkpoint_fits(_config(), {"0.weight": (10, 6), "0.bias": (10,)},
                          in_channels=None, image_size=None, num_features=6)
    assert seen["num_features"] == 6
