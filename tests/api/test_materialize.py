"""``POST /v1/jobs/{id}/materialize`` without a worker: which α a request is answered with."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.helpers import Api
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
    assert again.json()["alpha"] == 0.3
    other = api.client.post(base, json={"alpha": 0.300001})
    assert other.status_code == 202 and other.json()["alpha"] == 0.300001
    listed = api.client.get(f"/v1/jobs/{job_id}/materializations").json()["items"]
    assert [m["alpha"] for m in listed] == [0.3, 0.300001]
