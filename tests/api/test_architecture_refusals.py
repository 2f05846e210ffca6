"""An installed architecture the job's model checks refuse, run through HTTP by a real Celery
worker: the job fails once with the library's code and message (``invalid_config`` naming the
cause), where a torch error used to be retried ``MAX_STAGE_ATTEMPTS`` times and end in
``stage_failed_repeatedly``."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from api.dispatch import CeleryDispatcher
from persistence.settings import Settings
from tests.api.helpers import Api, upload_checkpoint, validator_with_test_architectures
from tests.service_fixtures import WorkerProcess

pytestmark = [pytest.mark.service, pytest.mark.slow]


def test_a_job_on_a_reentrant_checkpointed_model_fails_once_naming_it(
        service_settings: Settings, start_api: Callable[..., Api],
        start_worker: Callable[..., WorkerProcess], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """``torch.utils.checkpoint(use_reentrant=True)`` in forward: the fit check at creation
    (meta tensors, no gradient) accepts it; the worker's first model check refuses it."""
    import torch

    from rift import checkpoints
    from rift.config import ArchitectureSpec
    from rift.models import build_model

    python_path, validator = validator_with_test_architectures(service_settings, tmp_path,
                                                               monkeypatch, request)
    worker = start_worker(PYTHONPATH=python_path)
    api = start_api(service_settings, dispatcher=CeleryDispatcher(service_settings),
                    validator=validator)

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, x=rng.integers(0, 256, (48, 8, 8, 3), dtype=np.uint8), y=np.arange(48) % 4)
    uploaded = api.client.post("/v1/datasets", files={"file": ("d.npz", buffer.getvalue(),
                                                               "application/zip")})
    assert uploaded.status_code == 201, uploaded.text
    torch.manual_seed(0)
    model = build_model(ArchitectureSpec(name="reentrant_checkpoint_net", num_classes=4),
                        in_channels=3, image_size=8)
    checkpoints.save_safetensors(tmp_path / "net.safetensors", model.state_dict())
    checkpoint = upload_checkpoint(api, tmp_path / "net.safetensors")
    created = api.client.post("/v1/jobs", json={
        "checkpoint_id": checkpoint["id"], "dataset_id": uploaded.json()["id"],
        "config": {"architecture": {"name": "reentrant_checkpoint_net", "num_classes": 4},
                   "dataset": {"name": "npz", "validation_fraction": 0.25},
                   "preflight": {"examples": 0}}})
    assert created.status_code == 201, created.text
    deadline = time.monotonic() + 300
    job = created.json()
    while job["status"] not in ("succeeded", "failed", "cancelled") \
            and time.monotonic() < deadline:
        time.sleep(0.5)
        job = api.client.get(f"/v1/jobs/{job['id']}").json()
    assert job["status"] == "failed", (job, worker.log()[-3000:])
    assert job["error"]["code"] == "invalid_config", job["error"]
    assert "use_reentrant=True" in job["error"]["message"]
