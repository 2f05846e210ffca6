"""Weights computed by a parametrization (``rift.models.parametrized``): weight_norm and
spectral_norm, as ``torch.nn.utils.parametrizations`` and as the older hooks, are folded into the
plain weights they compute, so a run gives exactly what the same network without them gives on
those weights. Before: such layers had no MRC row, fine-tuning one trained its bias alone, and a
spectral norm's power iteration moved the weights of frozen layers while another one trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from rift import checkpoints
from rift.config import RiftConfig
from rift.models import build_model
from rift.models.parametrized import fold_parametrized_weights
from rift.pipeline import PipelineCallbacks, prepare_run, run_pipeline
from tests.tiny_configs import random_images_config
from validator.fit import check_checkpoint_fits

PARAMETRIZED = {
    "weight_norm_net": ("conv2.parametrizations.weight.original0", "weight_norm"),
    "spectral_norm_net": ("conv2.parametrizations.weight.original", "spectral_norm"),
    "hook_weight_norm_net": ("conv2.weight_g", "weight_norm"),
    "hook_spectral_norm_net": ("conv2.weight_orig", "spectral_norm"),
}


# The older hooks are deprecated (a FutureWarning), and still in checkpoints' code.
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")


def _config(folder: Path, architecture: str, **mrc: Any) -> RiftConfig:
    return random_images_config(folder, architecture, tuned="conv2", step_size=0.015, lr=0.05,
                                mrc={"steps": 2, **mrc})


def _trained_state(config: RiftConfig) -> dict[str, Tensor]:
    """The parametrized net's state dict after a few train-mode passes (a spectral norm's u and
    v then hold a converged power iteration, as a trained checkpoint's do)."""
    torch.manual_seed(0)
    model = build_model(config.architecture, in_channels=3, image_size=8)
    with torch.no_grad():
        for _ in range(5):
            model(torch.rand(4, 3, 8, 8))
    return model.state_dict()


def _folded(config: RiftConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` loaded into the parametrized net, then the net folded by hand: the weights the
    same network without parametrizations holds."""
    model = build_model(config.architecture, in_channels=3, image_size=8)
    checkpoints.load_into(model, state)
    fold_parametrized_weights(model)
    return model.state_dict()


def _run(config: RiftConfig, state: dict[str, Tensor], out: Path
         ) -> tuple[dict[str, Any], list[str]]:
    warned: list[str] = []
    result = run_pipeline(config, state, out, PipelineCallbacks(
        on_event=lambda kind, data: warned.append(data["message"]) if kind == "warning"
        else None))
    return result, warned


def _untimed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in row.items() if key != "seconds"} for row in rows]


@pytest.mark.parametrize("architecture", list(PARAMETRIZED))
def test_a_parametrized_weight_is_scored_tuned_and_written_as_the_plain_weight_it_computes(
        plugin_path: Path, tmp_path: Path, architecture: str) -> None:
    key, kind = PARAMETRIZED[architecture]
    config = _config(tmp_path, architecture)
    state = _trained_state(config)
    assert key in state and "conv2.weight" not in state
    result, warned = _run(config, state, tmp_path / "run")

    # The reference: the same network without parametrizations, holding the weights computed.
    folded = _folded(config, state)
    expected, _ = _run(_config(tmp_path, "plain_conv_net"), folded, tmp_path / "plain")

    assert [row["name"] for row in result["mrc"]["rows"]] == ["conv1", "conv2", "head"]
    assert _untimed(result["mrc"]["rows"]) == _untimed(expected["mrc"]["rows"])
    assert result["interpolation"]["curve"] == expected["interpolation"]["curve"]
    for name in ("finetuned.safetensors", "tuned.safetensors"):
        got = checkpoints.load_state_dict(tmp_path / "run" / name)
        want = checkpoints.load_state_dict(tmp_path / "plain" / name)
        assert list(got) == list(want)
        assert all(torch.equal(got[k], want[k]) for k in want), name
    theta_ft = checkpoints.load_state_dict(tmp_path / "run" / "finetuned.safetensors")
    changed = {k for k, v in theta_ft.items() if not torch.equal(v, folded[k])}
    assert changed == {"conv2.weight", "conv2.bias"}  # before: conv2.bias (and u, v) only
    message = next(m for m in warned if "computed by a parametrization" in m)
    assert f"conv2.weight ({kind}; keys {key}" in message and "head.weight" in message
    assert "remove_parametrizations" in message


@pytest.mark.parametrize("architecture", ["weight_norm_net", "hook_spectral_norm_net"])
def test_a_checkpoint_holding_the_plain_weights_loads_into_the_parametrized_architecture(
        plugin_path: Path, tmp_path: Path, architecture: str) -> None:
    """A run's own output (or a file saved after remove_parametrizations) holds ``conv2.weight``:
    before, the parametrized architecture refused it as a key mismatch."""
    config = _config(tmp_path, architecture)
    folded = _folded(config, _trained_state(config))
    assert "conv2.weight" in folded
    run = prepare_run(config, folded)
    assert list(run.original_state) == list(folded)
    assert all(torch.equal(run.original_state[k], v) for k, v in folded.items())


@pytest.mark.parametrize("architecture", ["spectral_norm_net", "hook_weight_norm_net"])
def test_the_fit_check_scores_the_parametrized_layers_as_the_job_does(
        plugin_path: Path, tmp_path: Path, architecture: str) -> None:
    """``POST /v1/jobs``'s check on the meta model: naming a parametrized layer in
    ``mrc.modules`` was refused ("matches no conv or linear module") while the job scores it."""
    config = _config(tmp_path, architecture, modules=["conv2", "head"])
    state = _trained_state(config)
    for weights in (state, _folded(config, state)):
        check_checkpoint_fits(config, {k: tuple(v.shape) for k, v in weights.items()},
                              in_channels=3, image_size=8)


@pytest.mark.parametrize("architecture", ["weight_norm_net", "hook_weight_norm_net"])
def test_plain_weights_under_a_wrappers_prefix_load_into_the_parametrized_architecture(
        plugin_path: Path, tmp_path: Path, architecture: str) -> None:
    """A LightningModule's checkpoint of a weight-normed network saved after
    remove_parametrizations (``model.conv2.weight``): the folded-weights test looked for
    ``conv2.weight`` before the wrapper's prefix was read, and the job and the fit check at job
    creation refused it as a key mismatch."""
    config = _config(tmp_path, architecture)
    folded = _folded(config, _trained_state(config))
    wrapped = {f"model.{key}": value for key, value in folded.items()}
    run = prepare_run(config, wrapped)
    assert list(run.original_state) == list(folded)
    assert all(torch.equal(run.original_state[k], v) for k, v in folded.items())
    assert any("prefix 'model.'" in warning for warning in run.model_warnings)
    check_checkpoint_fits(config, {k: tuple(v.shape) for k, v in wrapped.items()},
                          in_channels=3, image_size=8)
