"""A tabular job through HTTP end to end: feature vectors (N, F) uploaded as npz, the built-in
``mlp``, and an operator-installed architecture (``rift.architectures`` entry point) run by a real
Celery worker whose PYTHONPATH holds the plugin distribution."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from api.dispatch import CeleryDispatcher
from api.validation import Validator
from persistence.settings import Settings
from tests.api.helpers import Api, upload_checkpoint
from tests.entry_point_dist import ARCHITECTURE, write_entry_point_dist
from tests.service_fixtures import PROJECT_ROOT, WorkerProcess

pytestmark = [pytest.mark.service, pytest.mark.slow]


def _wait(api: Api, job_id: str, worker: WorkerProcess) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    job = api.client.get(f"/v1/jobs/{job_id}").json()
    while job["status"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.5)
        job = api.client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", (job, worker.log()[-3000:])
    return dict(job)


def _fast_config(architecture: dict[str, Any]) -> dict[str, Any]:
    from rift.demo_tabular import tabular_demo_config

    config = tabular_demo_config("unused")
    config["architecture"] = architecture
    config["dataset"] = {"name": "npz", "validation_fraction": 0.2}
    config["mrc"].update(steps=2, num_examples=64)
    config["finetune"].update(epochs=1, lr_milestones=[])
    config["interpolation"]["alpha_step"] = 0.5
    config.pop("device")
    return config


def test_tabular_jobs_with_builtin_mlp_and_an_installed_architecture(
        service_settings: Settings, start_api: Callable[..., Api],
        start_worker: Callable[..., WorkerProcess], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    import torch

    from rift import checkpoints
    from rift.config import ArchitectureSpec
    from rift.demo_tabular import make_tabular_checkpoint, write_breast_cancer_npz
    from rift.models import build_model

    plugin = write_entry_point_dist(tmp_path / "site")
    monkeypatch.syspath_prepend(str(plugin))  # this test builds the plugin's model itself too
    worker = start_worker(PYTHONPATH=f"{plugin}:{PROJECT_ROOT}")
    # The API's validator builds the model to check the checkpoint: it must see the plugin too,
    # as an installed package would be seen (its server inherits PYTHONPATH, nothing secret).
    monkeypatch.setenv("PYTHONPATH", f"{plugin}:{PROJECT_ROOT}")
    validator = Validator(service_settings)
    request.addfinalizer(validator.close)
    api = start_api(service_settings, dispatcher=CeleryDispatcher(service_settings),
                    validator=validator)

    npz = write_breast_cancer_npz(tmp_path / "bc.npz")
    make_tabular_checkpoint(tmp_path / "mlp.safetensors", npz, epochs=3)
    buffer = io.BytesIO(npz.read_bytes())
    uploaded = api.client.post("/v1/datasets",
                               files={"file": ("bc.npz", buffer.getvalue(), "application/zip")})
    assert uploaded.status_code == 201, uploaded.text
    dataset_id = uploaded.json()["id"]

    # 1. The built-in mlp, trained adversarially on the features.
    checkpoint = upload_checkpoint(api, tmp_path / "mlp.safetensors")
    created = api.client.post("/v1/jobs", json={
        "checkpoint_id": checkpoint["id"], "dataset_id": dataset_id,
        "config": _fast_config({"name": "mlp", "num_classes": 2, "hidden": [32, 32]})})
    assert created.status_code == 201, created.text
    job = _wait(api, created.json()["id"], worker)
    assert job["metrics"]["preflight"]["clean_accuracy"] > 80.0
    rows = api.client.get(f"/v1/jobs/{job['id']}/mrc").json()["rows"]
    assert [row["module"] for row in rows] == ["layers.0", "layers.1", "head"]

    # 2. An operator's architecture, known to the worker only through its entry point. Its
    # weights are an untrained network's, so the preflight check is switched off.
    torch.manual_seed(0)
    plugin_model = build_model(ArchitectureSpec(name=ARCHITECTURE, num_classes=2),
                               in_channels=30, image_size=1)
    checkpoints.save_safetensors(tmp_path / "plugin.safetensors", plugin_model.state_dict())
    checkpoint = upload_checkpoint(api, tmp_path / "plugin.safetensors")
    config = _fast_config({"name": ARCHITECTURE, "num_classes": 2})
    config["preflight"] = {"examples": 0}
    created = api.client.post("/v1/jobs", json={
        "checkpoint_id": checkpoint["id"], "dataset_id": dataset_id, "config": config})
    assert created.status_code == 201, created.text
    job = _wait(api, created.json()["id"], worker)
    rows = api.client.get(f"/v1/jobs/{job['id']}/mrc").json()["rows"]
    assert [row["module"] for row in rows] == ["body", "out"]
    assert np.isfinite(job["metrics"]["after"]["clean_accuracy"])
