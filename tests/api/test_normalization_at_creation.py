"""``architecture.normalization`` (or ``mean``/``std``) given to an installed builder that does
not pass them on (RiFT's input buffers left unset) at ``POST /v1/jobs``: the fit check's meta
model shows it, so the job is refused at creation as its worker would refuse it
(``rift.models.normalization_applied``); before, it was created and ran unnormalised."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from persistence.settings import Settings
from tests.api.helpers import (
    Api,
    RecordingDispatcher,
    error_of,
    upload_checkpoint,
    validator_with_test_architectures,
)


def test_a_normalisation_the_builder_drops_is_refused_at_creation(
        api_settings: Settings, start_api: Callable[..., Api], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    import torch

    from rift import checkpoints
    from rift.config import ArchitectureSpec
    from rift.models import build_model

    _, validator = validator_with_test_architectures(api_settings, tmp_path, monkeypatch,
                                                     request)
    api = start_api(api_settings, dispatcher=RecordingDispatcher(), validator=validator)

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, x=rng.integers(0, 256, (48, 8, 8, 3), dtype=np.uint8), y=np.arange(48) % 4)
    uploaded = api.client.post("/v1/datasets", files={"file": ("d.npz", buffer.getvalue(),
                                                               "application/zip")})
    assert uploaded.status_code == 201, uploaded.text
    architecture = {"name": "drops_normalization_net", "num_classes": 4}
    torch.manual_seed(0)
    model = build_model(ArchitectureSpec(**architecture), in_channels=3, image_size=8)
    checkpoints.save_safetensors(tmp_path / "net.safetensors", model.state_dict())
    checkpoint = upload_checkpoint(api, tmp_path / "net.safetensors")

    def create(**settings: object) -> object:
        return api.client.post("/v1/jobs", json={
            "checkpoint_id": checkpoint["id"], "dataset_id": uploaded.json()["id"],
            "config": {"architecture": {**architecture, **settings},
                       "dataset": {"name": "npz", "validation_fraction": 0.25},
                       "attack": {"eps": 0.03, "step_size": 0.01, "steps": 2}}})

    refused = create(normalization="cifar10")
    assert refused.status_code == 422, refused.text  # type: ignore[attr-defined]
    error = error_of(refused)  # type: ignore[arg-type]
    assert error["field"] == "config.architecture.normalization", error
    assert "'drops_normalization_net' ignores the input normalisation" in error["message"]
    accepted = create()
    assert accepted.status_code == 201, accepted.text  # type: ignore[attr-defined]
