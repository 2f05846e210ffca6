"""One project's share of the upload validator (``api/validation_shares.py``): past
``VALIDATION_MAX_PENDING_PER_PROJECT`` checks waiting or running, its next upload is a 429 at
once, while another project's upload still waits its turn and gets its answer."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from api.validation import ServerLauncher, Validator
from persistence.settings import Settings
from tests.api.helpers import Api, RecordingDispatcher, error_of, make_key

pytestmark = pytest.mark.service


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_one_project_cannot_hold_every_worker_thread(
        api_settings: Settings, start_api: Callable[..., Api], validator_launch: ServerLauncher,
        small_cnn_file: Path) -> None:
    # Before: every upload waited for the validator's slot in one of the API's 40 worker threads,
    # so one project's burst held them all and every route of every project waited behind it.
    settings = api_settings.model_copy(update={"validation_max_concurrency": 1,
                                               "validation_max_pending_per_project": 2})
    validator = Validator(settings, launch=validator_launch)
    try:
        api = start_api(settings, dispatcher=RecordingDispatcher(), validator=validator)
        _, neighbour_key = make_key(api.sessions, "neighbour")
        validator.probe()  # started and warm
        # The validator's one slot, held long enough for every upload below to queue for it.
        holder = threading.Thread(target=validator.probe, kwargs={"sleep_seconds": 4})
        holder.start()
        threading.Event().wait(0.5)
        content = small_cnn_file.read_bytes()
        answers: dict[str, list[httpx.Response]] = {"tests": [], "neighbour": []}

        def upload(project: str, key: str) -> None:
            with httpx.Client(base_url=api.url, timeout=60,
                              headers={"Authorization": f"Bearer {key}"}) as client:
                answers[project].append(client.post(
                    "/v1/checkpoints", content=content,
                    headers={"Content-Type": "application/octet-stream"}))

        uploads = [threading.Thread(target=upload, args=("tests", api.key)) for _ in range(3)]
        uploads.append(threading.Thread(target=upload, args=("neighbour", neighbour_key)))
        for thread in uploads:
            thread.start()
        for thread in [*uploads, holder]:
            thread.join(60)
        statuses = sorted(answer.status_code for answer in answers["tests"])
        assert statuses == [201, 201, 429], [a.text for a in answers["tests"]]
        refused = next(a for a in answers["tests"] if a.status_code == 429)
        error = error_of(refused)
        assert error["code"] == "validation_pending_limit"
        assert error["field"] == "VALIDATION_MAX_PENDING_PER_PROJECT"
        assert (error["limit"], error["used"]) == (2, 2)
        assert refused.headers["Retry-After"] == "5"
        assert [a.status_code for a in answers["neighbour"]] == [201]
        # The shares are given back: the next upload is checked as usual.
        again = api.client.post("/v1/checkpoints", content=content,
                                headers={"Content-Type": "application/octet-stream"})
        assert again.status_code == 201, again.text
    finally:
        validator.close()
