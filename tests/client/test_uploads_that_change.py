"""A file that changes while it is being uploaded (a checkpoint still being written by the
training run, rewritten in place, truncated): ``FileChangedError`` (an ``OSError`` naming the
file), raised before the last chunk, so that the real service receives an incomplete body and
stores nothing. Before, a file that grew was sent cut at its first size and stored without a
word (the hash of the bytes sent matched the service's), and one rewritten in place was stored
half old, half new. The change is made by the upload's own progress callback after the first
chunk, with chunks made small so that the file spans several."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from rift_client import AsyncRiftClient, FileChangedError, RiftClient, flows
from tests.client.conftest import FAST_RETRY, MAX_UPLOAD_BYTES, RunningApi

pytestmark = pytest.mark.service

CHUNK = 16 * 1024


@pytest.fixture
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from rift.checkpoints import save_safetensors
    from tests.api.helpers import small_cnn_state

    path = tmp_path / "model.safetensors"
    save_safetensors(path, small_cnn_state())
    assert 3 * CHUNK < path.stat().st_size <= MAX_UPLOAD_BYTES
    # Written long ago: a write during the upload moves the modification time, however coarse
    # the file system's clock.
    os.utime(path, ns=(10**18, 10**18))
    monkeypatch.setattr(flows, "CHUNK_BYTES", CHUNK)
    return path


def _grow(path: Path) -> None:
    with path.open("ab") as handle:
        handle.write(b"\0" * 100)


def _rewrite_in_place(path: Path) -> None:
    # The same size, its last bytes (tensor data) changed: a file still valid, but not the one
    # whose first chunk was sent.
    with path.open("r+b") as handle:
        handle.seek(-64, os.SEEK_END)
        handle.write(b"\x7f" * 64)


def _shrink(path: Path) -> None:
    os.truncate(path, 2 * CHUNK)


CHANGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "grew": (_grow, "grew"), "rewritten": (_rewrite_in_place, "was written to"),
    "shrank": (_shrink, "shrank")}


def _once(change: Callable[[Path], None], path: Path) -> Callable[[int, int], None]:
    """A progress callback that changes the file after the first chunk was sent."""
    done: list[int] = []

    def progress(sent: int, _total: int) -> None:
        if not done:
            done.append(sent)
            change(path)

    return progress


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_an_upload_of_a_changing_file_is_refused_and_nothing_stored(
        rift: RiftClient, model: Path, change: str) -> None:
    act, said = CHANGES[change]
    with pytest.raises(FileChangedError) as changed:
        rift.upload_checkpoint(model, progress=_once(act, model))
    assert isinstance(changed.value, OSError) and changed.value.filename == str(model)
    assert f"{model} {said} while it was being uploaded" in str(changed.value)
    assert list(rift.list_checkpoints()) == []


def test_a_job_sent_with_a_growing_checkpoint_file_is_not_created(
        rift: RiftClient, model: Path) -> None:
    from tests.api.helpers import digits_config

    with pytest.raises(FileChangedError):
        rift.create_job({"config": digits_config()}, checkpoint_file=model,
                        progress=_once(_grow, model))
    assert list(rift.list_jobs()) == [] and list(rift.list_checkpoints()) == []


def test_the_async_client_refuses_a_growing_file_too(
        queued_api: RunningApi, api_key: str | None, model: Path) -> None:
    async def upload() -> None:
        async with AsyncRiftClient(queued_api.url, api_key=api_key, retry=FAST_RETRY) as rift:
            with pytest.raises(FileChangedError):
                await rift.upload_checkpoint(model, progress=_once(_grow, model))
            assert [c async for c in rift.list_checkpoints()] == []

    asyncio.run(upload())
