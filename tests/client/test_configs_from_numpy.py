"""A job's config built in a notebook holds numpy and torch numbers (a rate picked from an
``np.linspace``, epochs from ``np.argmax``, a tensor's ``.item()`` forgotten): they are sent as
the numbers they hold, in the JSON request and in the multipart one, by both clients; NaN,
infinity and other objects are a ``RiftUsageError`` naming the key, before anything is sent.

The same numbers given as arguments (``materialize``'s α, ``wait``'s ``timeout``, a ``limit``,
a project limit, the client's ``timeout``) are taken as the numbers they are.

Before: ``TypeError: Object of type int64 is not JSON serializable`` and ``ValueError: Out of
range float values are not JSON compliant``, naming neither the key nor what to do; and
"alpha must be a finite number, not np.float32(0.5)"."""

from __future__ import annotations

import asyncio
import datetime
import io
from typing import Any

import numpy as np
import pytest
import torch

from rift_client import (
    AsyncRiftClient,
    ConflictError,
    RiftClient,
    RiftUsageError,
    WaitTimeoutError,
)
from tests.api.helpers import digits_config, small_cnn_state
from tests.client.conftest import FAST_RETRY, RunningApi

pytestmark = pytest.mark.service


def _weights() -> bytes:
    buffer = io.BytesIO()
    torch.save(small_cnn_state(), buffer)
    return buffer.getvalue()


def _numpy_config() -> dict[str, Any]:
    """A config holding numpy and torch values where it means 1, 0.25, 2 and 0.5."""
    config = digits_config()
    config["finetune"]["epochs"] = np.argmax(np.array([0, 1]))  # np.int64(1)
    config["attack"]["eps"] = np.float32(0.25)  # exact in float32, so the same number back
    config["attack"]["steps"] = torch.tensor(2)
    config["interpolation"]["alpha_step"] = np.linspace(0, 1, 3)[1]  # np.float64(0.5)
    return config


def _meant(config: dict[str, Any] | None) -> list[object]:
    assert config is not None
    values = [config["finetune"]["epochs"], config["attack"]["eps"], config["attack"]["steps"],
              config["interpolation"]["alpha_step"]]
    assert [type(value) for value in values] == [int, float, int, float]
    return values


def test_numpy_and_torch_numbers_are_sent_as_numbers(rift: RiftClient, queued_api: RunningApi,
                                                     api_key: str | None) -> None:
    config = _numpy_config()
    checkpoint = rift.upload_checkpoint(_weights(), filename="cnn.pt")
    job = rift.create_job({"config": config}, checkpoint_id=checkpoint.id)
    assert _meant(rift.get_job(job.id).config) == [1, 0.25, 2, 0.5]
    with_file = rift.create_job({"config": config}, checkpoint_file=_weights())
    assert _meant(rift.get_job(with_file.id).config) == [1, 0.25, 2, 0.5]

    async def from_async() -> dict[str, Any] | None:
        async with AsyncRiftClient(queued_api.url, api_key=api_key, retry=FAST_RETRY) as client:
            made = await client.create_job({"config": config}, checkpoint_id=checkpoint.id)
            return (await client.get_job(made.id)).config

    assert _meant(asyncio.run(from_async())) == [1, 0.25, 2, 0.5]


@pytest.mark.parametrize(("where", "value", "field"), [
    (("attack", "eps"), float("nan"), "spec.config.attack.eps"),
    (("attack", "eps"), np.float32("inf"), "spec.config.attack.eps"),
    (("labels_of_mine",), [1, np.nan], "spec.config.labels_of_mine[1]"),
    (("started",), datetime.date(2026, 11, 28), "spec.config.started"),
], ids=["nan", "numpy-inf", "nan-in-a-list", "a-date"])
def test_values_json_cannot_carry_are_named_before_sending(
        rift: RiftClient, where: tuple[str, ...], value: object, field: str) -> None:
    config = digits_config()
    section = config
    for key in where[:-1]:
        section = section[key]
    section[where[-1]] = value
    checkpoint = rift.upload_checkpoint(_weights(), filename="cnn.pt")
    for call in (lambda: rift.create_job({"config": config}, checkpoint_id=checkpoint.id),
                 lambda: rift.create_job({"config": config}, checkpoint_file=_weights())):
        with pytest.raises(RiftUsageError) as raised:
            call()
        assert raised.value.field == field and field in str(raised.value)
    assert rift.list_jobs_page().items == []
    assert [c.id for c in rift.list_checkpoints()] == [checkpoint.id]  # no multipart copy


def test_numpy_and_torch_numbers_are_taken_as_arguments(queued_api: RunningApi,
                                                        api_key: str | None) -> None:
    with RiftClient(queued_api.url, api_key=api_key, retry=FAST_RETRY,
                    timeout=np.float32(30)) as rift:
        assert type(rift.timeout) is float
        checkpoint = rift.upload_checkpoint(_weights(), filename="cnn.pt")
        jobs = [rift.create_job({"config": digits_config()}, checkpoint_id=checkpoint.id)
                for _ in range(2)]
        assert [job.id for job in rift.list_jobs(limit=np.int64(1))] == [jobs[1].id]
        with pytest.raises(WaitTimeoutError):
            rift.wait(jobs[0].id, timeout=np.float32(0.3), poll_interval=torch.tensor(0.1))
        # Sent, and answered by the service: the job has not succeeded.
        with pytest.raises(ConflictError, match="succeeded"):
            rift.materialize(jobs[0].id, np.float32(0.5))
        with pytest.raises(ConflictError, match="succeeded"):
            rift.materialize(jobs[0].id, torch.tensor(0.25))
        project = rift.set_project_limits("client-tests", {"max_active_jobs": np.int64(7)})
        assert project.max_active_jobs == 7
        # A bool is still no number, nor an array of several.
        for alpha in (np.bool_(True), np.array([0.5, 0.6])):
            with pytest.raises(RiftUsageError, match="alpha must be a finite number"):
                rift.materialize(jobs[0].id, alpha)  # type: ignore[arg-type]
