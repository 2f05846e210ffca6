"""Jobs whose α is chosen with ``interpolation.curve: "selection"`` (the default) through HTTP on a
real Celery worker (Postgres, Redis): a point whose attack stopped once it could no longer change
the choice has no robust accuracy but keeps its upper bound, ``robust_accuracy_at_most``, in the
database, ``GET /curves``, the Python client and the report page; a full curve's points have none.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rift_client import RiftClient
from tests.api.helpers import Api, run_job, upload_checkpoint
from tests.service_fixtures import WorkerProcess

pytestmark = [pytest.mark.service, pytest.mark.slow]


def test_cut_short_points_keep_their_upper_bound(
        start_worker: Callable[..., WorkerProcess], celery_api: Api,
        digits_checkpoint_path: Path, quick_config: dict[str, Any]) -> None:
    worker, api = start_worker(), celery_api
    checkpoint = upload_checkpoint(api, digits_checkpoint_path)
    # lr 0.1 on fc: clean accuracy ties at the top of the curve, so the points above the chosen
    # α are attacked only until they cannot beat it (tests/rift/test_pipeline.py).
    config = copy.deepcopy(quick_config)
    config["finetune"].update(module="fc", lr=0.1)
    selection = run_job(api, checkpoint["id"], config, (worker,))
    full = run_job(api, checkpoint["id"], {
        **config, "interpolation": {**config["interpolation"], "curve": "full"}}, (worker,))

    points = api.client.get(f"/v1/jobs/{selection['id']}/curves").json()["interpolation"]
    cut_short = [p for p in points if p["robust_accuracy_at_most"] is not None]
    assert cut_short, points
    for point in cut_short:
        assert point["robust_accuracy"] is None and not point["chosen"]
        assert 0.0 <= point["robust_accuracy_at_most"] <= 100.0
    # Measured in full (the chosen α, θ_AT's bar) or never attacked: no bound.
    assert all(p["robust_accuracy_at_most"] is None for p in points
               if p["robust_accuracy"] is not None)
    assert any(p["chosen"] and p["robust_accuracy"] is not None for p in points)

    full_points = api.client.get(f"/v1/jobs/{full['id']}/curves").json()["interpolation"]
    assert all(p["robust_accuracy"] is not None and p["robust_accuracy_at_most"] is None
               for p in full_points)
    # The same job measured in full: each bound holds, and the choice is the same.
    measured = {p["alpha"]: p["robust_accuracy"] for p in full_points}
    assert all(p["robust_accuracy_at_most"] >= measured[p["alpha"]] for p in cut_short)
    assert full["chosen_alpha"] == selection["chosen_alpha"]

    with RiftClient(api.url, api_key=api.key) as client:
        curves = client.get_curves(selection["id"])
    assert [p.robust_accuracy_at_most for p in curves.interpolation] == [
        p["robust_accuracy_at_most"] for p in points]
    report = api.client.get(f"/v1/jobs/{selection['id']}/report").text
    assert f"<td>≤ {cut_short[0]['robust_accuracy_at_most']:.4g}</td>" in report
