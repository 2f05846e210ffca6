"""Tests of rift/demo.py: the demo config is a valid job and the checkpoint is a real one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from rift import checkpoints
from rift.config import ArchitectureSpec, AttackSpec, RiftConfig
from rift.demo import DIGITS_DEMO_CONFIG, make_digits_checkpoint
from rift.errors import CheckpointError, ConfigError
from rift.models import build_model


def test_demo_config_is_a_valid_job() -> None:
    config = RiftConfig.model_validate(DIGITS_DEMO_CONFIG)
    assert config.architecture.name == "small_cnn"
    assert config.dataset.name == "digits"
    assert config.interpolation.alpha_step == 0.1


def test_make_digits_checkpoint_writes_a_loadable_file(tmp_path: Path) -> None:
    path = tmp_path / "digits.safetensors"
    metrics = make_digits_checkpoint(path, seed=0, epochs=1, device="cpu")
    assert path.exists() and metrics["path"] == str(path)
    assert 0.0 <= metrics["robust_accuracy"] <= metrics["clean_accuracy"] <= 100.0
    assert len(metrics["history"]) == 1
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["arch"] == "small_cnn" and meta["dataset"] == "digits"
    AttackSpec.model_validate_json(meta["attack"])
    model = build_model(ArchitectureSpec(name="small_cnn", num_classes=10), in_channels=1,
                        image_size=8)
    state = checkpoints.load_state_dict(path)
    checkpoints.check_compatible(model, state)
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in state.items()
               if v.is_floating_point())


@pytest.mark.parametrize("seed", [-1, 2**31, 10**23])
def test_a_seed_out_of_range_is_refused_before_training(tmp_path: Path, seed: int) -> None:
    # Before: 10**23 trained for seconds, then failed with "ValueError: Overflow when unpacking
    # long long"; run's seed was held to [0, 2**31 - 1], demo-checkpoint's to nothing.
    from rift.demo_tabular import make_tabular_checkpoint

    with pytest.raises(ConfigError, match="seed must be between 0 and 2147483647") as error:
        make_digits_checkpoint(tmp_path / "ck.safetensors", seed=seed)
    assert error.value.field == "seed"
    with pytest.raises(ConfigError):
        make_tabular_checkpoint(tmp_path / "t.safetensors", tmp_path / "none.npz", seed=seed)
    assert not (tmp_path / "ck.safetensors").exists()


def test_a_folder_as_output_is_refused_before_training(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import rift.demo

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained before checking the output path")

    monkeypatch.setattr(rift.demo, "adversarially_train", no_training)
    with pytest.raises(CheckpointError, match="it is a folder"):
        make_digits_checkpoint(tmp_path, seed=0)
