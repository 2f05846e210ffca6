"""Uploads of what a Python program holds rather than names: the bytes themselves, an
``io.BytesIO`` (a checkpoint saved to a buffer), an open binary file; and the file objects an
upload cannot use, refused before anything is sent.

Before, every upload took a path only: bytes, a BytesIO or an open file raised
``TypeError: expected str, bytes or os.PathLike object, not BytesIO`` from inside pathlib, and
a text-mode file the same words, none naming the argument or saying what to do."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from pathlib import Path

import pytest

from rift_client import AsyncRiftClient, RiftClient, RiftUsageError
from tests.api.helpers import digits_config
from tests.client.conftest import FAST_RETRY, RunningApi
from tests.client.helpers import ScriptedReply, ScriptedServer

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from rift.checkpoints import save_safetensors
    from tests.api.helpers import small_cnn_state

    path = tmp_path_factory.mktemp("weights") / "made.safetensors"
    save_safetensors(path, small_cnn_state())
    return path.read_bytes()


def test_bytes_a_buffer_and_an_open_file_are_uploaded_whole(
        rift: RiftClient, weights: bytes, tmp_path: Path) -> None:
    digest = hashlib.sha256(weights).hexdigest()
    from_bytes = rift.upload_checkpoint(weights, filename="in-memory.safetensors")
    assert (from_bytes.sha256, from_bytes.size, from_bytes.filename) == \
        (digest, len(weights), "in-memory.safetensors")
    # A buffer is sent from where it stands (a header the program wrote first is not sent).
    buffer = io.BytesIO(b"HEADER" + weights)
    buffer.seek(6)
    from_buffer = rift.upload_checkpoint(buffer)
    assert (from_buffer.sha256, from_buffer.filename, from_buffer.format) == \
        (digest, "upload", "safetensors")
    assert not buffer.closed  # the caller's stream is the caller's to close
    path = tmp_path / "opened.safetensors"
    path.write_bytes(weights)
    with path.open("rb") as opened:
        from_file = rift.upload_checkpoint(opened)
    assert (from_file.sha256, from_file.filename) == (digest, "opened.safetensors")


def test_a_job_takes_its_checkpoint_from_a_buffer(rift: RiftClient, queued_api: RunningApi,
                                                  weights: bytes) -> None:
    job = rift.create_job({"config": digits_config()}, checkpoint_file=io.BytesIO(weights))
    assert rift.get_checkpoint(job.checkpoint_id).sha256 == hashlib.sha256(weights).hexdigest()


def test_the_async_client_uploads_a_buffer(queued_api: RunningApi, api_key: str | None,
                                           weights: bytes) -> None:
    async def upload() -> str:
        async with AsyncRiftClient(queued_api.url, api_key=api_key, retry=FAST_RETRY) as rift:
            return (await rift.upload_checkpoint(io.BytesIO(weights))).sha256

    assert asyncio.run(upload()) == hashlib.sha256(weights).hexdigest()


def test_a_retried_upload_rewinds_the_buffer_and_sends_it_whole(
        scripted: list[ScriptedServer]) -> None:
    content = b"weights" * 1000
    record = {"id": "ck_1", "filename": "upload", "size": len(content),
              "sha256": hashlib.sha256(content).hexdigest(), "format": "safetensors",
              "num_tensors": 1, "num_parameters": 1, "created_at": "2026-01-01T00:00:00Z"}
    server = ScriptedServer([ScriptedReply(503, None, {"Retry-After": "0"}),
                             ScriptedReply(201, record)])
    scripted.append(server)
    buffer = io.BytesIO(b"skip" + content)
    buffer.seek(4)
    with RiftClient(server.url, retry=FAST_RETRY) as client:
        assert client.upload_checkpoint(buffer).id == "ck_1"
    assert [seen.body for seen in server.seen] == [content, content]
    assert len({seen.headers["idempotency-key"] for seen in server.seen}) == 1


def test_file_objects_an_upload_cannot_use_are_refused_before_sending(
        scripted: list[ScriptedServer], tmp_path: Path) -> None:
    server = ScriptedServer([ScriptedReply(500, None)])
    scripted.append(server)
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights")
    read_end, write_end = os.pipe()
    with RiftClient(server.url, retry=FAST_RETRY) as client, path.open("r") as text, \
            os.fdopen(read_end, "rb") as pipe, os.fdopen(write_end, "wb"):
        with pytest.raises(TypeError, match="path is a file opened in text mode"):
            client.upload_checkpoint(text)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="checkpoint_file is a file opened in text mode"):
            client.create_job({"config": {}}, checkpoint_file=io.StringIO("weights"))  # type: ignore[arg-type]
        # Its size is unknown and a retry could not read it again: no truncated body is sent.
        with pytest.raises(RiftUsageError, match="path is a stream that cannot be rewound"):
            client.upload_checkpoint(pipe)
        read = io.BytesIO(b"weights")
        read.read()  # hashed first, say: its rest is empty
        with pytest.raises(RiftUsageError, match=r"path is at its end .* seek"):
            client.upload_checkpoint(read)
        with pytest.raises(TypeError, match=r"path must be a file's path .* not int"):
            client.upload_dataset(3)  # type: ignore[arg-type]
    assert server.seen == []


def test_a_model_a_state_dict_or_a_tensor_is_refused_saying_how_to_send_it(
        rift: RiftClient, queued_api: RunningApi) -> None:
    # A notebook holds the model, not a file: before, "not OrderedDict" / "not Linear", which
    # says what is wrong but not what to pass instead.
    import numpy as np
    import torch

    model = torch.nn.Linear(2, 2)
    for source, hint in ((model, r"torch\.save\(model\.state_dict\(\), buffer\)"),
                         (model.state_dict(), r"torch\.save\(state_dict, buffer\)"),
                         (torch.zeros(3), r"io\.BytesIO"), (np.zeros(3), r"numpy\.savez")):
        with pytest.raises(TypeError, match=hint):
            rift.upload_checkpoint(source)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"checkpoint_file must be .*" + hint):
            rift.create_job({"config": digits_config()}, checkpoint_file=source)  # type: ignore[arg-type]
    assert rift.list_checkpoints_page().items == [] and rift.list_jobs_page().items == []
    # What the message says to do is accepted as it is written.
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    assert rift.upload_checkpoint(buffer, filename="linear.pt").format == "torch"
