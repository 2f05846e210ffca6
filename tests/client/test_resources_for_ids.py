"""A resource the client returned, given where its id goes (``rift.wait(job)``,
``create_job(..., checkpoint_id=checkpoint)``: a notebook's usual slip), is a short
``RiftUsageError`` saying to pass its ``.id``, before anything is sent.

Before, ``checkpoint_id=checkpoint`` failed in json ("Object of type Checkpoint is not JSON
serializable") and ``wait(job)`` quoted the whole job, its config included, in the message."""

from __future__ import annotations

import asyncio
import io

import pytest
import torch

from rift_client import AsyncRiftClient, RiftClient, RiftUsageError
from tests.api.helpers import digits_config, small_cnn_state
from tests.client.conftest import FAST_RETRY, RunningApi

pytestmark = pytest.mark.service


def _weights() -> bytes:
    buffer = io.BytesIO()
    torch.save(small_cnn_state(), buffer)
    return buffer.getvalue()


def test_a_resource_in_place_of_its_id_is_told_to_pass_its_id(
        rift: RiftClient, queued_api: RunningApi, api_key: str | None) -> None:
    checkpoint = rift.upload_checkpoint(_weights(), filename="cnn.pt")
    with pytest.raises(RiftUsageError, match=r"not a Checkpoint: pass its \.id") as raised:
        rift.create_job({"config": digits_config()}, checkpoint_id=checkpoint)  # type: ignore[arg-type]
    assert raised.value.field == "checkpoint_id" and checkpoint.id in str(raised.value)
    assert rift.list_jobs_page().items == []
    job = rift.create_job({"config": digits_config()}, checkpoint_id=checkpoint.id)
    for call, field in ((lambda: rift.wait(job, timeout=1), "job_id"),  # type: ignore[arg-type]
                        (lambda: rift.cancel(job), "job_id"),  # type: ignore[arg-type]
                        (lambda: rift.get_mrc(job), "job_id"),  # type: ignore[arg-type]
                        (lambda: rift.delete_checkpoint(checkpoint), "checkpoint_id")):  # type: ignore[arg-type]
        with pytest.raises(RiftUsageError, match=r"pass its \.id") as raised:
            call()
        assert raised.value.field == field and len(str(raised.value)) < 200
    assert rift.get_job(job.id).status == "queued"  # not cancelled
    assert rift.get_checkpoint(checkpoint.id).id == checkpoint.id  # not deleted

    async def from_async() -> None:
        async with AsyncRiftClient(queued_api.url, api_key=api_key, retry=FAST_RETRY) as client:
            await client.get_job(job)  # type: ignore[arg-type]

    with pytest.raises(RiftUsageError, match=r"not a Job: pass its \.id"):
        asyncio.run(from_async())
