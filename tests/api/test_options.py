"""``OPTIONS`` on a route (:mod:`api.route_options`), over HTTP to the API under uvicorn: 204
with ``Allow`` listing exactly the path's methods, without a key; a path no route has is the
usual 404."""

from __future__ import annotations

import pytest

from tests.api.helpers import Api, error_of

pytestmark = [pytest.mark.service,
              pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

JOB_ID = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(("path", "allow"), [
    ("/v1/jobs", "GET, HEAD, POST, OPTIONS"),
    (f"/v1/jobs/{JOB_ID}", "GET, HEAD, DELETE, OPTIONS"),
    (f"/v1/jobs/{JOB_ID}/cancel", "POST, OPTIONS"),
    (f"/v1/jobs/{JOB_ID}/artifacts/mrc.csv", "GET, HEAD, OPTIONS"),
    ("/v1/admin/projects/tests", "GET, HEAD, PATCH, DELETE, OPTIONS"),
    ("/v1/checkpoints", "GET, HEAD, POST, OPTIONS"),
    ("/healthz", "GET, HEAD, OPTIONS"),
    ("/v1/readyz", "GET, HEAD, OPTIONS"),
    ("/openapi.json", "GET, HEAD, OPTIONS"),
])
def test_options_on_a_route_lists_its_methods_without_a_key(api: Api, path: str,
                                                            allow: str) -> None:
    anonymous = api.client_for(None)
    response = anonymous.options(path)
    # Before: 405 (FastAPI routes only the methods a route names).
    assert response.status_code == 204, response.text
    assert response.headers["allow"] == allow
    assert response.content == b"" and "content-length" not in response.headers
    # With a key, or a key that is wrong: the same answer (nothing is looked up).
    assert api.client.options(path).headers["allow"] == allow
    assert api.client_for("rift_wrong").options(path).status_code == 204
    # The methods listed are those the path serves: one it lacks is still a 405 saying them.
    wrong = api.client.request("PUT", path)
    assert wrong.status_code == 405 and wrong.headers["allow"] == allow


def test_options_on_a_path_no_route_has_is_the_usual_404(api: Api) -> None:
    anonymous = api.client_for(None)
    # Beside a path that has a route (a 405 before), and its trailing-slash slip:
    assert anonymous.options("/v1/webhooks").status_code == 204
    missing = anonymous.options("/v1/nothing-here")
    assert missing.status_code == 404
    assert error_of(missing)["field"] == "path"
    assert "allow" not in missing.headers
    # The trailing-slash and /v1-twice hints of every 404 too.
    slash = anonymous.options("/v1/jobs/")
    assert slash.status_code == 404 and slash.json()["error"]["path_meant"] == "/v1/jobs"
    twice = anonymous.options("/v1/v1/jobs")
    assert twice.status_code == 404 and twice.json()["error"]["path_meant"] == "/v1/jobs"


def test_options_is_logged_and_counted_like_any_request(api: Api) -> None:
    response = api.client_for(None).options("/v1/jobs", headers={"X-Request-ID": "opt-1"})
    assert response.status_code == 204
    assert response.headers["x-request-id"] == "opt-1"
