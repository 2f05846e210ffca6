"""A creation whose answer is lost (the connection cut after the real service acted, as a
restart or a proxy does): the client sends it again under the same Idempotency-Key and gets
what the first request made, so one job (and one stored checkpoint) exists, not two. A real TCP
proxy in front of the real API cuts the first answer before its first byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from rift_client import ConflictError, RiftClient
from tests.api.helpers import digits_config
from tests.client.conftest import FAST_RETRY, RunningApi
from tests.client.helpers import CuttingProxy

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rift.checkpoints import save_safetensors
    from tests.api.helpers import small_cnn_state

    path = tmp_path_factory.mktemp("lost-answer-checkpoints") / "model.safetensors"
    save_safetensors(path, small_cnn_state())
    return path


def _keys(proxy: CuttingProxy) -> list[str]:
    return [line.split(":", 1)[1].strip() for text in proxy.requests_text()
            for line in text.splitlines() if line.lower().startswith("idempotency-key:")]


@pytest.mark.parametrize("with_file", [False, True], ids=["checkpoint-id", "checkpoint-file"])
def test_a_job_whose_answer_was_lost_is_created_once(
        rift: RiftClient, queued_api: RunningApi, api_key: str | None, checkpoint_file: Path,
        with_file: bool) -> None:
    proxy = CuttingProxy(queued_api.url, marker=b"POST /v1/jobs ", cut_after=0, times=1)
    try:
        with RiftClient(proxy.url, api_key=api_key, retry=FAST_RETRY) as client:
            if with_file:
                job = client.create_job({"config": digits_config()},
                                        checkpoint_file=checkpoint_file)
            else:
                checkpoint = rift.upload_checkpoint(checkpoint_file)
                job = client.create_job({"config": digits_config()},
                                        checkpoint_id=checkpoint.id)
    finally:
        proxy.stop()
    assert proxy.cuts_done == 1
    keys = _keys(proxy)
    assert len(keys) == 2 and keys[0] == keys[1]
    assert [j.id for j in rift.list_jobs()] == [job.id]
    assert [c.id for c in rift.list_checkpoints()] == [job.checkpoint_id]


def test_a_cancel_whose_answer_was_lost_is_asked_again(
        rift: RiftClient, queued_api: RunningApi, api_key: str | None,
        checkpoint_file: Path) -> None:
    # The first cancel cancels the queued job, its answer is cut; the second is answered 409
    # job_finished (cancelled). Before, cancel was not retried: RiftConnectionError,
    # though the job was cancelled.
    checkpoint = rift.upload_checkpoint(checkpoint_file)
    job = rift.create_job({"config": digits_config()}, checkpoint_id=checkpoint.id)
    marker = f"POST /v1/jobs/{job.id}/cancel ".encode()
    proxy = CuttingProxy(queued_api.url, marker=marker, cut_after=0, times=1)
    try:
        with RiftClient(proxy.url, api_key=api_key, retry=FAST_RETRY) as client:
            cancelled = client.cancel(job.id)
            # Without a lost answer, a finished job's cancel is still the caller's 409.
            with pytest.raises(ConflictError) as refused:
                client.cancel(job.id)
    finally:
        proxy.stop()
    assert proxy.cuts_done == 1
    assert cancelled.id == job.id and cancelled.status == "cancelled"
    assert refused.value.code == "job_finished"
    assert sum(text.count(marker.decode()) for text in proxy.requests_text()) == 3
    assert rift.get_job(job.id).status == "cancelled"
