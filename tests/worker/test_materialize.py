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


def test_a_materializations_evaluation_is_the_interpolation_stages(tmp_path: Path) -> None:
    # It attacked θ_α unfolded while the stage attacks a BatchNorm-folded copy on a CPU in
    # fp32: the same function up to rounding, so counts rarely differed, but the numbers were
    # computed two ways. Both now go through rift.pipeline.evaluate_weights.
    from rift.batchnorm_folding import BatchNormFolding
    from rift.pipeline import evaluate_weights

    config = _config(tmp_path, "small_cnn", "conv2")
    # α chosen on the validation split: the job's "after" is evaluated on the test split as a
    # materialization is.
    config = config.model_copy(update={"interpolation": config.interpolation.model_copy(
        update={"selection_split": "validation"})})
    torch.manual_seed(0)
    state = build_model(config.architecture, in_channels=3, image_size=8).state_dict()
    # BatchNorm statistics and scales away from a fresh layer's (0, 1), as a trained one has:
    # folding them then rounds the logits differently (by ~5e-7 here), not only in theory.
    generator = torch.Generator().manual_seed(1)
    for key, value in state.items():
        if key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=generator) * 3 + 0.05
        elif key.endswith("running_mean"):
            state[key] = torch.randn(value.shape, generator=generator)
        elif key.startswith("bn") and key.endswith(".weight"):
            state[key] = torch.randn(value.shape, generator=generator) * 2
    checkpoint = tmp_path / "theta_at.pt"
    checkpoints.save_torch(checkpoint, state)
    result = run_pipeline(config, checkpoint, tmp_path / "out")
    alpha = result["chosen_alpha"]
    run = prepare_run(config, checkpoint)
    # The model is one the stage attacks folded (else this test could not tell the two apart).
    probe = run.splits.test.images[:8].float() / 255
    folding = BatchNormFolding(run.model, probe)
    folding.current()
    assert folding.folding is True

    store = LocalObjectStore(tmp_path / "store")
    store.put_file("checkpoints/c1", checkpoint)
    store.put_file("jobs/j1/finetuned.safetensors", tmp_path / "out" / "finetuned.safetensors")
    made = materialize_weights(
        Materialization(job_id="j1", alpha=alpha, artifact_name=f"tuned@{alpha}.safetensors",
                        evaluate=True),
        Job(id="j1", spec=config.model_dump(mode="json"), selected_module="conv2"),
        Checkpoint(id="c1", format="torch", storage_key="checkpoints/c1"), None,
        Artifact(storage_key="jobs/j1/finetuned.safetensors"), store, tmp_path / "work",
        device=None, data_root=None)
    theta_ft = checkpoints.load_state_dict(tmp_path / "out" / "finetuned.safetensors")
    expected = evaluate_weights(run, interpolate_weights(run.original_state, theta_ft, alpha))
    # The same report to the last bit (the robust loss sums every attacked logit: an unfolded
    # attack rounds differently), and the job's own "after".
    assert made.evaluation == expected
    assert {"clean_accuracy": made.clean_accuracy, "robust_accuracy": made.robust_accuracy} == (
        result["after"])


@pytest.mark.parametrize(("metrics", "lr"), [
    ({"sweep": {"chosen": 1, "candidates": 2, "module": "conv2", "lr": 0.05}}, "0.05"),
    ({}, None),  # one candidate: its rate is the config's finetune.lr
])
def test_materialized_weights_name_a_sweeps_chosen_rate_as_tuned_safetensors_does(
        tmp_path: Path, metrics: dict[str, object], lr: str | None) -> None:
    # A sweep's tuned.safetensors names the chosen candidate's module and lr; tuned@α of the
    # same job named the module only, so a file downloaded alone could not say which of
    # lr_grid's rates made it (the config in the header lists the whole grid).
    config = _config(tmp_path, "small_cnn", "conv2")
    torch.manual_seed(0)
    model = build_model(config.architecture, in_channels=3, image_size=8)
    checkpoint = tmp_path / "theta_at.pt"
    checkpoints.save_torch(checkpoint, model.state_dict())
    store = LocalObjectStore(tmp_path / "store")
    store.put_file("checkpoints/c1", checkpoint)
    finetuned = tmp_path / "finetuned.safetensors"
    checkpoints.save_safetensors(finetuned, model.state_dict(), {})
    store.put_file("jobs/j1/finetuned.safetensors", finetuned)
    made = materialize_weights(
        Materialization(job_id="j1", alpha=0.5, artifact_name="tuned@0.5.safetensors",
                        evaluate=False),
        Job(id="j1", spec=config.model_dump(mode="json"), selected_module="conv2",
            metrics=metrics),
        Checkpoint(id="c1", format="torch", storage_key="checkpoints/c1"), None,
        Artifact(storage_key="jobs/j1/finetuned.safetensors"), store, tmp_path / "work",
        device=None, data_root=None)
    header = checkpoints.read_safetensors_metadata(
        store.download_to(made.artifact.storage_key, tmp_path / "got.safetensors"))
    assert (header["module"], header["alpha"], header.get("lr")) == ("conv2", "0.5", lr)
