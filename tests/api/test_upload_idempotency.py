"""An upload sent again under its Idempotency-Key (a retry after a lost answer) returns what the
first one stored, 200 instead of 201, and stores nothing twice; the same key with another file is
409 naming the header; keys are per project; uploads racing with one key store one resource."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import update

from persistence.models import Checkpoint, Dataset, Project
from tests.api.helpers import Api, error_of, make_key, varied_images
from tests.api.test_datasets import npz_bytes

ROUTES = {"checkpoints": (Checkpoint, "checkpoint"), "datasets": (Dataset, "dataset")}


def _files(route: str, small_cnn_file: Path) -> tuple[str, bytes, bytes]:
    """A file name and two different acceptable files for ``route``."""
    if route == "checkpoints":
        from rift.checkpoints import save_safetensors
        from tests.api.helpers import small_cnn_state

        other = small_cnn_file.with_name("other.safetensors")
        save_safetensors(other, small_cnn_state(seed=1))
        return "m.safetensors", small_cnn_file.read_bytes(), other.read_bytes()
    return ("d.npz", npz_bytes(x=varied_images((8, 8, 8, 1)), y=np.arange(8) % 2),
            npz_bytes(x=varied_images((8, 8, 8, 1), seed=1), y=np.arange(8) % 2))


def _post(client: httpx.Client, route: str, name: str, content: bytes,
          key: str | None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post(f"/v1/{route}", files={"file": (name, content)}, headers=headers)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_an_upload_sent_again_under_its_key_is_stored_once(api: Api, route: str,
                                                           small_cnn_file: Path) -> None:
    model, kind = ROUTES[route]
    name, content, other = _files(route, small_cnn_file)
    first = _post(api.client, route, name, content, "upload-1")
    assert first.status_code == 201, first.text
    again = _post(api.client, route, name, content, "upload-1")
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert (api.count(model), len(api.stored_files())) == (1, 1)

    # The same key for another file, or the same bytes under another name: 409, nothing stored.
    for changed_name, changed_content in ((name, other), (f"renamed-{name}", content)):
        refused = _post(api.client, route, changed_name, changed_content, "upload-1")
        assert refused.status_code == 409, refused.text
        error = error_of(refused)
        assert (error["code"], error["field"]) == ("idempotency_conflict", "Idempotency-Key")
        assert error[f"{kind}_id"] == first.json()["id"]
    assert (api.count(model), len(api.stored_files())) == (1, 1)

    # Another key, or none, stores again; a malformed key is a 422 naming the header.
    assert _post(api.client, route, name, content, "upload-2").status_code == 201
    assert _post(api.client, route, name, content, None).status_code == 201
    malformed = _post(api.client, route, name, content, "has space")
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert (api.count(model), len(api.stored_files())) == (3, 3)
    assert api.scratch_files() == []


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_keys_are_per_project(api: Api, route: str, small_cnn_file: Path) -> None:
    name, content, _ = _files(route, small_cnn_file)
    _, other_key = make_key(api.sessions, "other-team")
    mine = _post(api.client, route, name, content, "shared-key")
    with httpx.Client(base_url=api.url,
                      headers={"Authorization": f"Bearer {other_key}"}) as other_team:
        theirs = _post(other_team, route, name, content, "shared-key")
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]


def _limit_storage(api: Api, max_stored_bytes: int) -> None:
    with api.sessions() as session:
        session.execute(update(Project).where(Project.id == api.project_id)
                        .values(max_stored_bytes=max_stored_bytes))
        session.commit()


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_replay_at_the_stored_bytes_quota_is_answered_not_refused(
        api: Api, route: str, small_cnn_file: Path) -> None:
    # A retry stores nothing, so a quota the first upload filled must not refuse it.
    model, _ = ROUTES[route]
    name, content, other = _files(route, small_cnn_file)
    first = _post(api.client, route, name, content, "at-quota")
    assert first.status_code == 201, first.text
    _limit_storage(api, first.json()["size"])
    again = _post(api.client, route, name, content, "at-quota")
    assert (again.status_code, again.json()) == (200, first.json()), again.text
    # Another file under the key is still a conflict; a new upload is over the quota.
    assert _post(api.client, route, name, other, "at-quota").status_code == 409
    refused = _post(api.client, route, name, other, "new-key")
    assert refused.status_code == 413 and error_of(refused)["field"] == "max_stored_bytes"
    assert (api.count(model), len(api.stored_files())) == (1, 1)


@pytest.mark.parametrize("quota", ["unlimited", "room for one"])
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_uploads_racing_with_one_key_store_one_resource(api: Api, route: str, quota: str,
                                                        small_cnn_file: Path) -> None:
    # With room for one upload only, the losers fail the quota before their row would hit
    # the key's unique constraint: they are replays all the same.
    model, _ = ROUTES[route]
    name, content, _ = _files(route, small_cnn_file)
    if quota == "room for one":
        _limit_storage(api, len(content) + len(content) // 2)
    start = threading.Barrier(4)
    answers: list[Any] = []

    def send() -> None:
        with httpx.Client(base_url=api.url, headers=dict(api.client.headers),
                          timeout=60) as client:
            start.wait()
            answers.append(_post(client, route, name, content, "racing"))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 201], \
        [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    # The losers' objects were deleted: one row, one stored file.
    assert (api.count(model), len(api.stored_files())) == (1, 1)
