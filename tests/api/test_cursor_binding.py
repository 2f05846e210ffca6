"""A pagination cursor is bound to the list it came from (:mod:`persistence.pages`): one from
another project's list, or from the same collection under other filters, is a 400 naming
``cursor`` instead of paging this list from an unrelated position."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from persistence.models import WebhookEndpoint
from persistence.pages import encode_cursor
from persistence.settings import Settings
from tests.api.helpers import (
    Api,
    RecordingDispatcher,
    digits_config,
    error_of,
    make_key,
    upload_checkpoint,
)

pytestmark = pytest.mark.service


@pytest.fixture
def allowing_api(api_settings: Settings, start_api: Callable[..., Api]) -> Api:
    settings = api_settings.model_copy(update={"webhook_allow_list": "127.0.0.1"})
    return start_api(settings, dispatcher=RecordingDispatcher())


def _of_another_list(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["field"] == "cursor" and error["code"] == "cursor_of_another_list"


def test_a_cursor_of_another_projects_list_is_refused(allowing_api: Api) -> None:
    api = allowing_api
    for n in range(2):
        assert api.client.post("/v1/webhooks", json={
            "url": f"http://127.0.0.1:9/hook{n}"}).status_code == 201
    first = api.client.get("/v1/webhooks", params={"limit": 1}).json()
    cursor = first["next_cursor"]
    assert cursor is not None
    _, other_key = make_key(api.sessions, "other")
    with api.client_for(other_key) as other:
        assert other.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/x"}).status_code == 201
        # Before: 200, the other project's list paged from this project's position.
        _of_another_list(other.get("/v1/webhooks", params={"cursor": cursor}))
    second = api.client.get("/v1/webhooks", params={"limit": 1, "cursor": cursor})
    assert second.status_code == 200 and len(second.json()["items"]) == 1

    # A cursor issued before the binding (three fields) is still read.
    with api.sessions() as session:
        row = session.get(WebhookEndpoint, first["items"][0]["id"])
        assert row is not None
        unbound = encode_cursor("webhooks", row.created_at, row.id)
    again = api.client.get("/v1/webhooks", params={"limit": 1, "cursor": unbound})
    assert again.status_code == 200 and again.json()["items"] == second.json()["items"]


def test_a_cursor_of_the_same_collection_under_other_filters_is_refused(
        api: Api, small_cnn_file: Path) -> None:
    checkpoint = upload_checkpoint(api, small_cnn_file)
    for _ in range(3):
        created = api.client.post("/v1/jobs", json={
            "checkpoint_id": checkpoint["id"], "config": digits_config(),
            "labels": {"team": "a"}})
        assert created.status_code == 201, created.text
    page = api.client.get("/v1/jobs", params={"label": "team:a", "limit": 1}).json()
    cursor = page["next_cursor"]
    _of_another_list(api.client.get("/v1/jobs", params={"cursor": cursor}))
    _of_another_list(api.client.get("/v1/jobs", params={"label": "team:b", "cursor": cursor}))
    followed = api.client.get("/v1/jobs", params={"label": "team:a", "limit": 1,
                                                  "cursor": cursor})
    assert followed.status_code == 200 and len(followed.json()["items"]) == 1

    # The same statuses in another order are the same list.
    by_status = api.client.get("/v1/jobs", params={"status": "queued,cancelled",
                                                   "limit": 1}).json()["next_cursor"]
    assert api.client.get("/v1/jobs", params={"status": "cancelled,queued",
                                              "cursor": by_status}).status_code == 200
    _of_another_list(api.client.get("/v1/jobs", params={"status": "queued",
                                                         "cursor": by_status}))
    # Checkpoints: ?format= is part of the list.
    upload_checkpoint(api, small_cnn_file)
    listed = api.client.get("/v1/checkpoints", params={"limit": 1}).json()["next_cursor"]
    _of_another_list(api.client.get("/v1/checkpoints", params={"format": "safetensors",
                                                               "cursor": listed}))
