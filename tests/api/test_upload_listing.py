"""``GET /v1/checkpoints`` and ``GET /v1/datasets`` over HTTP (SQLite and Postgres): the caller's
uploads only, newest first, paged like ``GET /v1/jobs`` (each row once, ties in ``created_at``
included), filtered by format or kind; every bad parameter is a 422 naming it; HEAD answers as
GET; both are in the OpenAPI schema."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from persistence.models import utcnow
from persistence.records import create_checkpoint, create_dataset
from tests.api.helpers import Api, error_of, make_key, upload_checkpoint
from tests.api.test_datasets import npz_bytes

pytestmark = pytest.mark.service

ROUTES = ("/v1/checkpoints", "/v1/datasets")


def add_checkpoint(api: Api, project_id: str, format: str, at: datetime) -> str:
    """A checkpoint row of ``project_id`` created at ``at``, written straight to the database."""
    with api.sessions() as session:
        return create_checkpoint(
            session, filename=f"m.{format}", size=1, sha256="0" * 64, format=format,
            storage_key="checkpoints/m", num_tensors=1, num_parameters=1, now=at,
            project_id=project_id).id


def add_dataset(api: Api, project_id: str, kind: str, at: datetime) -> str:
    """A dataset row of ``project_id`` created at ``at``, written straight to the database."""
    with api.sessions() as session:
        return create_dataset(session, filename=f"d.{kind}", kind=kind, size=1, sha256="0" * 64,
                              storage_key="datasets/d", now=at, project_id=project_id).id


ADDERS: dict[str, tuple[Callable[[Api, str, str, datetime], str], str, tuple[str, str]]] = {
    # route: (row factory, filter parameter, its two values)
    "/v1/checkpoints": (add_checkpoint, "format", ("safetensors", "torch")),
    "/v1/datasets": (add_dataset, "kind", ("npz", "imagefolder")),
}


def walk(client: httpx.Client, route: str, **params: Any) -> tuple[list[str], int]:
    """(the ids of every page, in order; the number of pages) following ``next_cursor``."""
    ids: list[str] = []
    pages, cursor = 0, None
    while True:
        response = client.get(route, params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        ids += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return ids, pages


@pytest.mark.parametrize("route", ROUTES)
def test_the_callers_uploads_newest_first_page_by_page(api: Api, route: str) -> None:
    add, name, (first, second) = ADDERS[route]
    start = utcnow() - timedelta(hours=1)
    theirs_id, their_key = make_key(api.sessions, "other-team")
    mine, theirs = [], []
    for i in range(7):
        at = start + timedelta(seconds=i // 3)  # groups of three share a created_at: ties
        mine.append(add(api, api.project_id, first if i % 2 else second, at))
        theirs.append(add(api, theirs_id, first, at))

    newest_first = sorted(mine, key=lambda row_id: (mine.index(row_id) // 3, row_id),
                          reverse=True)
    ids, pages = walk(api.client, route, limit=2)
    assert ids == newest_first and pages == 4  # each once, ties ordered by id
    assert walk(api.client, route)[0] == newest_first  # the default page holds them all
    assert walk(api.client, route, limit=1)[1] == 7

    # Another project's uploads are never listed, with or without a filter.
    with api.client_for(their_key) as stranger:
        listed, _ = walk(stranger, route, limit=3)
        assert sorted(listed) == sorted(theirs)
        assert walk(stranger, route, **{name: second})[0] == []

    only_first, _ = walk(api.client, route, limit=2, **{name: first})
    assert only_first == [i for i in newest_first if mine.index(i) % 2]


def test_a_listed_upload_reads_as_its_record(api: Api, small_cnn_file: Path) -> None:
    checkpoint = upload_checkpoint(api, small_cnn_file)
    listed = api.client.get("/v1/checkpoints").json()
    assert listed == {"items": [checkpoint], "next_cursor": None}
    rng = np.random.default_rng(0)
    uploaded = api.client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes(
        x=rng.integers(0, 255, (20, 8, 8, 1), dtype=np.uint8), y=np.arange(20) % 10))})
    assert uploaded.status_code == 201, uploaded.text
    datasets = api.client.get("/v1/datasets").json()
    # Built-in datasets are no uploads: only the npz is listed, as its own GET shows it.
    assert datasets["items"] == [api.client.get(f"/v1/datasets/{uploaded.json()['id']}").json()]
    assert datasets["items"][0]["content"] == "images" and datasets["next_cursor"] is None


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("query", "field", "code"), [
    ("limit=0", "limit", None),
    ("limit=101", "limit", None),
    ("limit=many", "limit", None),
    ("cursor=garbage!", "cursor", "invalid_cursor"),
    ("cursor=" + "x" * 600, "cursor", None),
    ("limit=1&limit=50", "limit", "repeated_parameter"),
    ("status=queued", "status", "unknown_parameter"),
    ("format=onnx", "format", None),
    ("kind=builtin", "kind", None),
    ("kind=npz&kind=npz", "kind", "repeated_parameter"),
])
def test_bad_parameters_are_422_naming_the_parameter(api: Api, route: str, query: str,
                                                     field: str, code: str | None) -> None:
    own = ADDERS[route][1]
    if field in ("format", "kind") and field != own:
        code = "unknown_parameter"  # the other route's filter is no parameter of this one
    response = api.client.get(f"{route}?{query}")
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["field"] == field, error
    if code is not None:
        assert error["code"] == code, error


def test_a_cursor_of_another_list_is_refused_naming_it(api: Api) -> None:
    start = utcnow()
    for i in range(2):
        add_checkpoint(api, api.project_id, "torch", start + timedelta(seconds=i))
        add_dataset(api, api.project_id, "npz", start + timedelta(seconds=i))
    cursors = {route: api.client.get(route, params={"limit": 1}).json()["next_cursor"]
               for route in (*ROUTES, "/v1/jobs")}
    assert cursors["/v1/jobs"] is None  # no jobs: one page
    checkpoints_cursor = cursors["/v1/checkpoints"]
    for route in ("/v1/datasets", "/v1/jobs"):
        # Before the tag, the same cursor would have paged the other list silently.
        response = api.client.get(route, params={"cursor": checkpoints_cursor})
        assert response.status_code == 422, response.text
        error = error_of(response)
        assert (error["field"], error["code"]) == ("cursor", "invalid_cursor")
        assert "it pages checkpoints" in error["message"]
    follow = api.client.get("/v1/checkpoints", params={"cursor": checkpoints_cursor})
    assert follow.status_code == 200 and len(follow.json()["items"]) == 1


@pytest.mark.parametrize("route", ROUTES)
def test_head_answers_as_get_and_needs_a_key(api: Api, route: str) -> None:
    ADDERS[route][0](api, api.project_id, ADDERS[route][2][0], utcnow())
    got, head = api.client.get(route), api.client.head(route)
    assert head.status_code == got.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(got.content)) != "0"
    assert head.headers["content-type"] == got.headers["content-type"]
    with api.client_for(None) as anonymous:
        assert anonymous.head(route).status_code == anonymous.get(route).status_code == 401
    assert api.client.head(f"{route}?limit=0").status_code == 422


def test_both_lists_are_in_the_openapi_schema(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    for route, page, own in [("/v1/checkpoints", "CheckpointPageOut", "format"),
                             ("/v1/datasets", "DatasetPageOut", "kind")]:
        operation = schema["paths"][route]["get"]
        assert {p["name"] for p in operation["parameters"] if p["in"] == "query"} == {
            own, "limit", "cursor"}
        answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer == {"$ref": f"#/components/schemas/{page}"}
        assert "post" in schema["paths"][route]  # the upload is still there
