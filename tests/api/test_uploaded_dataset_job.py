"""A job on the user's own data: an ``.npz`` uploaded through HTTP, run by a real Celery worker.

The archive holds the sklearn digits in the user-facing layout (uint8 NHWC images, int labels, an
explicit test split), so the job must reproduce what the built-in ``digits`` dataset gives: the
worker downloads the archive from the object store and the library reads it from there.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from api.dispatch import CeleryDispatcher
from persistence.settings import Settings
from tests.api.helpers import Api, upload_checkpoint
from tests.service_fixtures import WorkerProcess

pytestmark = [pytest.mark.service, pytest.mark.slow]


def _digits_npz() -> bytes:
    from rift.config import DatasetSpec
    from rift.data import load_dataset

    splits = load_dataset(DatasetSpec(name="digits"), seed=0)
    train = np.concatenate([splits.train.images.numpy(), splits.validation.images.numpy()])
    labels = np.concatenate([splits.train.labels.numpy(), splits.validation.labels.numpy()])
    buffer = io.BytesIO()
    np.savez(buffer, x=train.transpose(0, 2, 3, 1), y=labels,
             x_test=splits.test.images.numpy().transpose(0, 2, 3, 1),
             y_test=splits.test.labels.numpy())
    return buffer.getvalue()


def test_job_on_an_uploaded_npz_dataset(service_settings: Settings,
                                        start_api: Callable[..., Api],
                                        start_worker: Callable[..., WorkerProcess],
                                        digits_checkpoint_path, digits_job_config: dict[str, Any]
                                        ) -> None:
    worker = start_worker()
    api = start_api(service_settings, dispatcher=CeleryDispatcher(service_settings))
    uploaded = api.client.post("/v1/datasets",
                               files={"file": ("digits.npz", _digits_npz(), "application/zip")})
    assert uploaded.status_code == 201, uploaded.text
    dataset = uploaded.json()
    assert api.client.get(f"/v1/datasets/{dataset['id']}").json()["sha256"] == dataset["sha256"]

    checkpoint = upload_checkpoint(api, digits_checkpoint_path)
    config = {**digits_job_config, "dataset": {"name": "npz", "validation_fraction": 0.2}}
    config["mrc"].update(steps=2, num_examples=128)
    config["finetune"].update(epochs=2, lr_milestones=[])
    config["interpolation"]["alpha_step"] = 0.5
    created = api.client.post("/v1/jobs", json={
        "checkpoint_id": checkpoint["id"], "dataset_id": dataset["id"], "config": config})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    deadline = time.monotonic() + 240
    job = created.json()
    while job["status"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.5)
        job = api.client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", (job, worker.log()[-3000:])

    rows = api.client.get(f"/v1/jobs/{job_id}/mrc").json()["rows"]
    assert [row["module"] for row in rows] == ["conv1", "conv2", "conv3", "fc"]
    points = api.client.get(f"/v1/jobs/{job_id}/curves").json()["interpolation"]
    assert [point["alpha"] for point in points] == [0.0, 0.5, 1.0]
    before = job["metrics"]["before"]
    # The uploaded test split is the digits test split: θ_AT's clean accuracy on it is the one
    # measured when the checkpoint was made.
    from safetensors import safe_open

    with safe_open(str(digits_checkpoint_path), framework="pt") as handle:
        recorded = float(handle.metadata()["clean_accuracy"])
    assert before["clean_accuracy"] == pytest.approx(recorded, abs=1e-3)
