"""θ_α made after the job (``worker.materialize``) from the job's checkpoint file: the same
weights the run's own interpolation gives, also where the file is not what the model holds (fp16
values, BatchNorm counters the file lacks, weights a parametrization computes). Before: each of
those failed the materialization with "state dict entry ... differs" or "unexpected keys"."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from persistence.models import Artifact, Checkpoint, Job, Materialization
from persistence.storage import LocalObjectStore
from rift import checkpoints
from rift.config import RiftConfig
from rift.interpolation import interpolate_weights
from rift.models import build_model
from rift.pipeline import prepare_run, run_pipeline
from tests.tiny_configs import random_images_config
from worker.materialize import materialize_weights


def _config(folder: Path, architecture: str, module: str) -> RiftConfig:
    return random_images_config(folder, architecture, tuned=module, step_size=0.015, lr=0.05,
                                mrc={"steps": 1, "modules": [module]})


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.half() if value.is_floating_point() else value
            for key, value in state.items()}


def _without_counters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}


@pytest.mark.parametrize(("architecture", "module", "saved"), [
    ("small_cnn", "conv2", _half),  # the run casts the values to float32
    ("small_cnn", "conv2", _without_counters),  # the run's BatchNorm counters start at 0
    ("weight_norm_net", "conv2", dict),  # the run folds conv2's weight norm into conv2.weight
])
def test_materialized_weights_are_the_runs_interpolation_whatever_the_checkpoint_file_holds(
        plugin_path: Path, tmp_path: Path, architecture: str, module: str,
        saved: type[dict[str, torch.Tensor]]) -> None:
    config = _config(tmp_path, architecture, module)
    torch.manual_seed(0)
    model = build_model(config.architecture, in_channels=3, image_size=8)
    checkpoint = tmp_path / "theta_at.pt"
    checkpoints.save_torch(checkpoint, saved(model.state_dict()))
    run_pipeline(config, checkpoint, tmp_path / "out")
    theta_ft = checkpoints.load_state_dict(tmp_path / "out" / "finetuned.safetensors")
    expected = interpolate_weights(prepare_run(config, checkpoint).original_state, theta_ft, 0.5)

    store = LocalObjectStore(tmp_path / "store")
    store.put_file("checkpoints/c1", checkpoint)
    store.put_file("jobs/j1/finetuned.safetensors", tmp_path / "out" / "finetuned.safetensors")
    made = materialize_weights(
        Materialization(job_id="j1", alpha=0.5, artifact_name="tuned@0.5.safetensors",
                        evaluate=False),
        Job(id="j1", spec=config.model_dump(mode="json"), selected_module=module),
        Checkpoint(id="c1", format="torch", storage_key="checkpoints/c1"), None,
        Artifact(storage_key="jobs/j1/finetuned.safetensors"), store, tmp_path / "work",
        device=None, data_root=None)
    got = checkpoints.load_state_dict(
        store.download_to(made.artifact.storage_key, tmp_path / "got.safetensors"))
    assert sorted(got) == sorted(expected)  # a safetensors file lists its keys sorted
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
