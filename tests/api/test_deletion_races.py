"""A delete racing a job's creation: the database's foreign keys decide, and the loser gets the
4xx it would have got had the requests come one after the other, never a 500.

The interleavings are placed by wrapping a step of the server (it runs in this process): a
delete that lands between a job's checks and its insert, and a job that is committed between a
delete's check and its DELETE."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import delete

from api import job_requests
from api.services import deletion
from api.services import jobs as job_service
from persistence.models import Checkpoint, Dataset
from persistence.storage import build_object_store
from tests.api.helpers import Api, digits_config, error_of, upload_checkpoint, varied_images
from tests.api.test_datasets import npz_bytes

pytestmark = pytest.mark.service


def test_a_checkpoint_deleted_while_its_job_is_checked_is_422_unknown_checkpoint(
    api: Api, small_cnn_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint_id = upload_checkpoint(api, small_cnn_file)["id"]
    checked = job_service.check_time_limit  # the last check before the job's insert

    def delete_meanwhile(*args: Any) -> None:
        with api.sessions() as other:  # the concurrent DELETE /v1/checkpoints/{id}
            other.execute(delete(Checkpoint).where(Checkpoint.id == checkpoint_id))
            other.commit()
        checked(*args)

    monkeypatch.setattr(job_service, "check_time_limit", delete_meanwhile)
    # Before: 500 (the job's insert broke the foreign key), also with an Idempotency-Key.
    for headers in ({}, {"Idempotency-Key": "race-1"}):
        response = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint_id,
                                                     "config": digits_config()},
                                   headers=headers)
        assert response.status_code == 422, response.text
        assert (error_of(response)["code"], error_of(response)["field"]) == (
            "unknown_checkpoint", "checkpoint_id")
    assert api.count_jobs() == 0


def test_a_checkpoint_deleted_while_its_file_is_read_is_422_unknown_checkpoint(
    api: Api, small_cnn_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The DELETE removes the row, then the file, between the job check's read of the row and
    # its read of the file's header. Before: 503 object_missing ("the store lost a file").
    checkpoint_id = upload_checkpoint(api, small_cnn_file)["id"]
    read_tensors = job_requests.stored_checkpoint_tensors
    store = build_object_store("local", local_root=api.settings.store_root)

    def deleted_meanwhile(job_store: Any, key: str, *args: Any) -> Any:
        with api.sessions() as other:
            other.execute(delete(Checkpoint).where(Checkpoint.id == checkpoint_id))
            other.commit()
        store.delete(key)
        return read_tensors(job_store, key, *args)

    monkeypatch.setattr(job_requests, "stored_checkpoint_tensors", deleted_meanwhile)
    response = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint_id,
                                                 "config": digits_config()})
    assert response.status_code == 422, response.text
    assert (error_of(response)["code"], error_of(response)["field"]) == (
        "unknown_checkpoint", "checkpoint_id")
    assert api.count_jobs() == 0


def test_a_dataset_deleted_while_its_job_is_checked_is_422_unknown_dataset(
    api: Api, small_cnn_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint_id = upload_checkpoint(api, small_cnn_file)["id"]
    images = varied_images((20, 8, 8, 1))
    dataset = api.client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes(
        x=images, y=np.arange(20) % 10))}).json()
    checked = job_service.check_time_limit  # the last check before the job's insert

    def delete_meanwhile(*args: Any) -> None:
        with api.sessions() as other:
            other.execute(delete(Dataset).where(Dataset.id == dataset["id"]))
            other.commit()
        checked(*args)

    monkeypatch.setattr(job_service, "check_time_limit", delete_meanwhile)
    response = api.client.post("/v1/jobs", json={
        "checkpoint_id": checkpoint_id, "dataset_id": dataset["id"],
        "config": digits_config(dataset={"name": "npz"})})
    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == "unknown_dataset"
    assert api.count_jobs() == 0


@pytest.mark.parametrize("resource", ["checkpoints", "datasets"])
def test_a_job_created_during_a_delete_makes_it_409_in_use(
    api: Api, small_cnn_file: Path, monkeypatch: pytest.MonkeyPatch, resource: str
) -> None:
    checkpoint_id = upload_checkpoint(api, small_cnn_file)["id"]
    body: dict[str, Any] = {"checkpoint_id": checkpoint_id, "config": digits_config()}
    target = checkpoint_id
    if resource == "datasets":
        dataset = api.client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes(
            x=varied_images((20, 8, 8, 1)), y=np.arange(20) % 10))}).json()
        body.update(dataset_id=dataset["id"], config=digits_config(dataset={"name": "npz"}))
        target = dataset["id"]
    job = api.client.post("/v1/jobs", json=body)
    assert job.status_code == 201, job.text
    real_check: Callable[..., None] = deletion._refuse_if_used
    calls: list[str] = []

    def check_before_the_job_existed(*args: Any) -> None:
        # The first check runs as if the job's insert had not been committed yet.
        calls.append("check")
        if len(calls) > 1:
            real_check(*args)

    monkeypatch.setattr(deletion, "_refuse_if_used", check_before_the_job_existed)
    # Before: 500 (the DELETE broke the job's foreign key).
    response = api.client.delete(f"/v1/{resource}/{target}")
    assert response.status_code == 409, response.text
    error = error_of(response)
    assert error["code"] == "in_use" and error["job_ids"] == [job.json()["id"]]
    assert api.client.get(f"/v1/{resource}/{target}").status_code == 200
