"""``POST /v1/jobs/{id}/materialize`` without a worker: which α a request is answered with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import update

from persistence.models import Materialization
from persistence.settings import Settings
from tests.api.helpers import Api, RecordingDispatcher, error_of
from tests.api.test_request_input import succeeded_job

pytestmark = pytest.mark.service


def test_alphas_agreeing_to_six_digits_are_one_materialization_at_the_rounded_alpha(
    api: Api, small_cnn_file: Path
) -> None:
    job_id = succeeded_job(api, small_cnn_file)
    base = f"/v1/jobs/{job_id}/materialize"
    first = api.client.post(base, json={"alpha": 0.30000012})
    assert first.status_code == 202, first.text
    # Before: the row kept 0.30000012, and the later request for 0.3 got those weights.
    assert first.json()["alpha"] == 0.3
    assert first.json()["artifact"] == "tuned@0.3.safetensors"
    again = api.client.post(base, json={"alpha": 0.3})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    # Before: no Location (the status to follow was only in the body's "url").
    assert first.headers["location"] == again.headers["location"] == first.json()["url"] == (
        f"/v1/jobs/{job_id}/materializations/{first.json()['id']}")
    assert again.json()["alpha"] == 0.3
    other = api.client.post(base, json={"alpha": 0.300001})
    assert other.status_code == 202 and other.json()["alpha"] == 0.300001
    # Paged like the job list, newest first. Before: one unpaged list in α order.
    path = f"/v1/jobs/{job_id}/materializations"
    page = api.client.get(path, params={"limit": 1}).json()
    assert [m["alpha"] for m in page["items"]] == [0.300001] and page["job_id"] == job_id
    rest = api.client.get(path, params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert [m["alpha"] for m in rest["items"]] == [0.3] and rest["next_cursor"] is None
    for params, field in (({"limit": 101}, "limit"), ({"cursor": "nope"}, "cursor"),
                          ({"limt": 1}, "limt")):
        refused = api.client.get(path, params=params)
        assert refused.status_code == 422 and error_of(refused)["field"] == field, refused.text
    zero = api.client.post(base, json={"alpha": 0})
    assert zero.status_code == 202 and zero.json()["artifact"] == "tuned@0.safetensors"
    # Before: a second materialization of θ_0, 202 with the artifact "tuned@-0.safetensors".
    negative_zero = api.client.post(base, content=b'{"alpha": -0.0}',
                                    headers={"Content-Type": "application/json"})
    assert negative_zero.status_code == 200, negative_zero.text
    assert negative_zero.json()["id"] == zero.json()["id"]
    assert negative_zero.json()["alpha"] == 0.0
    assert negative_zero.json()["artifact"] == "tuned@0.safetensors"


def test_materializations_past_the_pending_limit_are_429_naming_it(
    api_settings: Settings, start_api: Callable[..., Api], small_cnn_file: Path
) -> None:
    api = start_api(api_settings.model_copy(update={"materialize_max_pending": 2}),
                    dispatcher=RecordingDispatcher())
    first_job, second_job = succeeded_job(api, small_cnn_file), succeeded_job(api, small_cnn_file)
    assert api.client.post(f"/v1/jobs/{first_job}/materialize",
                           json={"alpha": 0.1}).status_code == 202
    assert api.client.post(f"/v1/jobs/{second_job}/materialize",
                           json={"alpha": 0.2}).status_code == 202
    # Before: only the stored-bytes quota bounded how many a project could queue.
    refused = api.client.post(f"/v1/jobs/{first_job}/materialize", json={"alpha": 0.3})
    assert refused.status_code == 429, refused.text
    error = error_of(refused)
    assert error["code"] == "quota_exceeded" and error["field"] == "max_pending_materializations"
    assert error["limit"] == 2 and error["pending"] == 2
    assert refused.headers["retry-after"] == "30"
    # An α asked for before is answered as before, without counting.
    assert api.client.post(f"/v1/jobs/{first_job}/materialize",
                           json={"alpha": 0.1}).status_code == 200
    # Once one has finished there is room again.
    with api.sessions() as session:
        session.execute(update(Materialization).where(Materialization.alpha == 0.1)
                        .values(status="succeeded"))
        session.commit()
    assert api.client.post(f"/v1/jobs/{first_job}/materialize",
                           json={"alpha": 0.3}).status_code == 202
    assert api.count(Materialization) == 3
