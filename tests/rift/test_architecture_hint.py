"""``rift.architecture_hint``: a refused checkpoint that fits another built-in architecture is
told which (the fit check's meta models; the pipeline's real ones)."""

from __future__ import annotations

import pytest
import torch

from rift.architecture_hint import fitting_architecture
from rift.config import ArchitectureSpec, RiftConfig
from rift.errors import CheckpointMismatchError
from rift.models import build_model
from rift.pipeline import prepare_run


def _spec(name: str, num_classes: int = 10) -> ArchitectureSpec:
    return ArchitectureSpec.model_validate({"name": name, "num_classes": num_classes})


def test_the_architecture_the_weights_fit_is_found_and_none_when_none_does() -> None:
    with torch.device("meta"):
        small = build_model(_spec("small_cnn"), in_channels=1, image_size=8)
    shapes = {key: tuple(value.shape) for key, value in small.state_dict().items()}
    assert fitting_architecture(_spec("resnet18"), shapes, [1], 8) == "small_cnn"
    assert fitting_architecture(_spec("resnet18"), shapes, [3], 8) is None  # 1 channel only
    # Another class count fits no built-in network with the job's num_classes.
    assert fitting_architecture(_spec("resnet18", num_classes=100), shapes, [1], 8) is None
    assert fitting_architecture(_spec("small_cnn"), shapes, [1], 8) is None  # itself: skipped


def test_the_pipeline_names_the_architecture_a_checkpoint_fits() -> None:
    torch.manual_seed(0)
    weights = build_model(_spec("small_cnn"), in_channels=1, image_size=8).state_dict()
    config = RiftConfig.model_validate({"architecture": {"name": "resnet18", "num_classes": 10},
                                        "dataset": {"name": "digits"}, "device": "cpu"})
    with pytest.raises(CheckpointMismatchError) as caught:
        prepare_run(config, weights)
    assert caught.value.message.startswith("these weights fit the architecture 'small_cnn'")
