"""``if_match=`` on the client's deletes, with the ETag its ``get_*`` kept (``.etag``), and the
typed 412 (:class:`PreconditionFailedError`) naming the resource's current ETag."""

from __future__ import annotations

from pathlib import Path

import pytest

from rift_client import NotFoundError, PreconditionFailedError, RiftClient, RiftUsageError
from tests.api.helpers import digits_config
from tests.client.test_client import _upload, checkpoint_file  # noqa: F401 (a fixture)


def test_a_delete_with_a_stale_etag_is_a_typed_412(rift: RiftClient,
                                                  checkpoint_file: Path) -> None:  # noqa: F811
    checkpoint = _upload(rift, checkpoint_file)
    read = rift.get_checkpoint(checkpoint.id)
    assert read.etag is not None and read.etag.startswith('"')
    # The ETag is kept beside the value, not in it: a read equals the upload's answer.
    assert read == checkpoint and checkpoint.etag is None and "etag" not in read.model_dump()

    job = rift.create_job({"config": digits_config()}, checkpoint_id=checkpoint.id)
    held = rift.get_job(job.id)
    rift.cancel(job.id)
    with pytest.raises(PreconditionFailedError) as stale:
        rift.delete_job(job.id, if_match=held.etag)
    current = rift.get_job(job.id).etag
    assert stale.value.status_code == 412 and stale.value.field == "If-Match"
    assert stale.value.current_etag == current and current != held.etag
    rift.delete_job(job.id, if_match=current)
    with pytest.raises(NotFoundError):
        rift.get_job(job.id)

    with pytest.raises(RiftUsageError, match="if_match"):
        rift.delete_checkpoint(checkpoint.id, if_match=" ")
    rift.delete_checkpoint(checkpoint.id, if_match=read.etag)
    with pytest.raises(NotFoundError):
        rift.get_checkpoint(checkpoint.id)
