"""The report page and ``/metrics`` in every state a user can reach, checked by their real
consumers: headless Chromium (console, requests, layout) and ``prometheus_client``'s parser.

Jobs run on a real Celery worker (Postgres, Redis) through the API: a plain job, a sweep, a
sharded MRC, a ``selection`` table and curve, one cancelled while fine-tuning and one on feature
vectors (``mlp``). The report of each is fetched whenever its status or stage changes, and both
metrics endpoints (the API's and the worker's) are scraped throughout. States no run makes on
demand (a failure in each stage with a hostile message, hundreds of modules with hostile names,
zero or one α point) are written into the database the way ``finish_stage`` and ``fail_job``
write them. Every page is then loaded in one Chromium start."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.dispatch import CeleryDispatcher
from persistence.models import EpochMetric, InterpolationPoint, Job, MRCRow
from tests.api.browser import StaticSite, layout_of, load_page
from tests.api.helpers import JOB_TIMEOUT_S, Api, upload_checkpoint
from tests.api.report_checks import counters_gone_back, page_problems, parse_metrics
from tests.service_fixtures import WorkerProcess, settings_from_env, start_worker_serving_metrics

pytestmark = [pytest.mark.service, pytest.mark.slow]

#: Text chosen to break out of every context the page writes text into: element content,
#: single- and double-quoted attributes, <style>, <title>, an SVG <text>; plus right-to-left
#: override, emoji, a C0 control (which XML, hence SVG, cannot hold).
HOSTILE = ("<script>alert(1)</script>\"'><img src=x onerror=alert(2)></style></title>"
           "</svg>&amp;\u202eevil\u202c 🧪 مرحبا \x07")
ENDED = ("succeeded", "failed", "cancelled")


def _configs(quick: dict[str, Any]) -> dict[str, dict[str, Any]]:
    single = copy.deepcopy(quick)
    single["finetune"].update(epochs=1, lr_milestones=[])
    sweep = copy.deepcopy(single)
    sweep["finetune"].pop("lr", None)
    sweep["finetune"].update(candidates=2, lr_grid=[0.01, 0.05])
    sharded = copy.deepcopy(single)
    sharded["mrc"]["shards"] = 2
    selection = copy.deepcopy(single)
    selection["mrc"]["table"] = "selection"
    selection["interpolation"]["curve"] = "selection"
    cancelled = copy.deepcopy(quick)
    cancelled["finetune"].update(epochs=40, lr_milestones=[])
    return {"single": single, "sweep": sweep, "sharded": sharded, "selection": selection,
            "cancelled": cancelled}


def _tabular_job(api: Api, folder: Path) -> str:
    """A job on feature vectors (an uploaded npz of shape (N, 30)) with the built-in ``mlp``."""
    from rift.demo_tabular import make_tabular_checkpoint, tabular_demo_config, write_breast_cancer_npz

    npz = write_breast_cancer_npz(folder / "bc.npz")
    make_tabular_checkpoint(folder / "mlp.safetensors", npz, epochs=3)
    dataset = api.client.post("/v1/datasets", files={"file": ("bc.npz", npz.read_bytes(),
                                                              "application/zip")})
    assert dataset.status_code == 201, dataset.text
    config = tabular_demo_config("unused")
    config["architecture"] = {"name": "mlp", "num_classes": 2, "hidden": [32, 32]}
    config["dataset"] = {"name": "npz", "validation_fraction": 0.2}
    config["mrc"].update(steps=2, num_examples=64)
    config["finetune"].update(epochs=1, lr_milestones=[])
    config["interpolation"]["alpha_step"] = 0.5
    config.pop("device")
    created = api.client.post("/v1/jobs", json={
        "checkpoint_id": upload_checkpoint(api, folder / "mlp.safetensors")["id"],
        "dataset_id": dataset.json()["id"], "config": config})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _report(api: Api, job_id: str) -> tuple[bytes, dict[str, str]]:
    response = api.client.get(f"/v1/jobs/{job_id}/report")
    assert response.status_code == 200, (job_id, response.text[:2000])
    assert response.headers["content-type"].startswith("text/html")
    return response.content, {name: response.headers[name]
                              for name in ("content-type", "content-security-policy")}


class Scrapes:
    """Both metrics endpoints, parsed at every scrape; counters must never fall."""

    def __init__(self, api: Api, worker_url: str) -> None:
        self.api = api
        self.worker_url = worker_url
        self.last: dict[str, dict[Any, float]] = {}
        self.count = 0

    def scrape(self) -> None:
        for name, text in (("api", self.api.client.get("/metrics").text),
                           ("worker", httpx.get(self.worker_url, timeout=30).text)):
            samples = parse_metrics(text)
            assert counters_gone_back(self.last.get(name, {}), samples) == [], name
            self.last[name] = samples
        self.count += 1


def _write_results(api: Api, job_id: str, *, status: str, stage: str | None,
                   modules: list[str], alphas: list[float], epochs: int,
                   selected: str | None, error: tuple[str, str] | None = None) -> None:
    """Rows and state as the worker's ``finish_stage``/``fail_job`` leave them."""
    with api.sessions() as session:
        for position, module in enumerate(modules):
            session.add(MRCRow(job_id=job_id, position=position, module=module,
                               parameters=10 + position, mrc=0.001 * position,
                               worst_robust_loss=1.0 + position, robust_accuracy_at_worst=40.0,
                               robust_accuracy_drop=0.1 * position, exact=position % 3 != 1))
        for epoch in range(1, epochs + 1):
            session.add(EpochMetric(job_id=job_id, epoch=epoch, lr=0.01, train_loss=1.0,
                                    train_accuracy=50.0 + epoch, val_accuracy=49.0 + epoch))
        for position, alpha in enumerate(alphas):
            session.add(InterpolationPoint(job_id=job_id, position=position, alpha=alpha,
                                           clean_accuracy=80.0 + alpha, robust_accuracy=None,
                                           robust_accuracy_at_most=60.0 if position else None))
        job = session.get(Job, job_id)
        assert job is not None
        job.status, job.stage, job.selected_module = status, stage, selected
        if error is not None:
            job.error_code, job.error_message = error
        session.commit()


def test_report_and_metrics_in_every_state_in_a_real_browser(
        service_env: dict[str, str], start_worker: Callable[..., WorkerProcess],
        start_api: Callable[..., Api], digits_checkpoint_path: Path,
        quick_config: dict[str, Any], tmp_path: Path) -> None:
    settings = settings_from_env(service_env)
    api = start_api(settings, dispatcher=CeleryDispatcher(settings))
    checkpoint = upload_checkpoint(api, digits_checkpoint_path)
    pages: dict[str, tuple[bytes, dict[str, str]]] = {}

    def snapshot(name: str, job_id: str) -> None:
        pages[f"/{len(pages)}-{name}"] = _report(api, job_id)

    jobs: dict[str, str] = {}
    for kind, config in _configs(quick_config).items():
        created = api.client.post("/v1/jobs", json={
            "checkpoint_id": checkpoint["id"], "config": config,
            "labels": {"kind": kind, "note": HOSTILE.replace("\x07", "")}})
        assert created.status_code == 201, created.text
        jobs[kind] = created.json()["id"]
    jobs["tabular"] = _tabular_job(api, tmp_path)
    snapshot("queued", jobs["single"])

    # States no run makes on demand, on jobs cancelled before any worker saw them.
    many = [f"layer{i}.{HOSTILE}" if i % 50 == 7 else f"blocks.{i}.conv" for i in range(300)]
    many[3] = "very.long." * 60 + "end"
    written = {
        "failed-mrc": dict(status="failed", stage="mrc", modules=[], alphas=[], epochs=0,
                           selected=None, error=("stage_failed", HOSTILE * 40)),
        "failed-finetune": dict(status="failed", stage="finetune", modules=many[:5], alphas=[],
                                epochs=1, selected=HOSTILE, error=("numerical_error", HOSTILE)),
        "failed-interpolation": dict(status="failed", stage="interpolate", modules=many[:5],
                                     alphas=[0.0], epochs=2, selected=many[7],
                                     error=("worker_lost", "\u202e" + HOSTILE)),
        "many-modules": dict(status="succeeded", stage=None, modules=many, alphas=[0.5],
                             epochs=1, selected=many[7]),
        "running-one-point": dict(status="running", stage="interpolate", modules=many[:3],
                                  alphas=[1.0], epochs=1, selected="blocks.1.conv"),
    }
    for name, state in written.items():
        created = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                                    "config": quick_config})
        job_id = created.json()["id"]
        assert api.client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        if name == "failed-mrc":
            snapshot("cancelled-while-queued", job_id)
        _write_results(api, job_id, **state)  # type: ignore[arg-type]
        snapshot(name, job_id)

    # Requests whose path and method a client chose: they must not reach a metric's labels.
    from urllib.parse import quote

    for method, path in (("GET", f"/v1/jobs/{quote(HOSTILE)}/report"), ("PURGE", "/v1/jobs"),
                         ("GET", f"/static/{quote(HOSTILE)}"), ("GET", "/" + quote(HOSTILE))):
        assert api.client.request(method, path).status_code in (404, 405)
    worker, port = start_worker_serving_metrics(start_worker)
    scrapes = Scrapes(api, f"http://127.0.0.1:{port}/metrics")
    seen: dict[str, tuple[str, str | None]] = {}
    deadline = time.monotonic() + 2 * JOB_TIMEOUT_S
    while True:
        active = 0
        for kind, job_id in jobs.items():
            job = api.client.get(f"/v1/jobs/{job_id}").json()
            state = (job["status"], job["stage"])
            if state != seen.get(kind):
                seen[kind] = state
                snapshot(f"{kind}-{state[0]}-{state[1]}", job_id)
            if kind == "cancelled" and state == ("running", "finetune") and not job.get(
                    "cancel_requested"):
                assert api.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
            active += job["status"] not in ENDED
        scrapes.scrape()
        if not active:
            break
        assert time.monotonic() < deadline, (seen, worker.log()[-3000:])
        time.sleep(0.3)
    outcome = {kind: api.client.get(f"/v1/jobs/{job_id}").json()["status"]
               for kind, job_id in jobs.items()}
    assert outcome == {"single": "succeeded", "sweep": "succeeded", "sharded": "succeeded",
                       "selection": "succeeded", "cancelled": "cancelled",
                       "tabular": "succeeded"}, worker.log()[-3000:]
    # A running job's page says which stage runs (it said "running" and, in MRC, nothing else).
    # (The page's own status: a job may move on between the poll and the page.)
    running = [path for path, (body, _) in pages.items()
               if b"<dt>status</dt><dd>running</dd>" in body]
    assert running and [p for p in running if b"<dt>stage</dt><dd>" not in pages[p][0]] == []
    # Every page as its parser sees it (text, markup, chart numbers) ...
    problems = {path: page_problems(body.decode()) for path, (body, _) in pages.items()}
    assert {path: found for path, found in problems.items() if found} == {}
    # ... and as Chromium does, every page in one start: nothing on the console, no request but
    # the pages themselves.
    with StaticSite(pages) as site:
        loaded = load_page(site.url, timeout=180)
    assert loaded.console == []
    assert sorted(loaded.requests) == sorted([site.url, *site.page_urls])
    layout = layout_of(loaded.dom)
    assert sorted(layout) == sorted(pages)
    for path, found in layout.items():
        # Nothing wider than the screen, every chart at its own size, no text past its edges.
        assert found["scrollWidth"] == found["clientWidth"], (path, found)
        assert all(c["width"] >= c["natural"] - 1 for c in found["charts"]), (path, found)  # type: ignore[attr-defined]
        assert found["outside"] == [], (path, found["outside"])
    # On a phone's width (Chromium's least window is 500 px; a frame can be narrower): charts
    # scale down or scroll in their box, the page never scrolls sideways.
    with StaticSite(pages, frame=(400, 800)) as site:
        narrow = layout_of(load_page(site.url, timeout=180).dom)
    assert {path: (found["scrollWidth"], found["clientWidth"]) for path, found in narrow.items()
            if found["scrollWidth"] != found["clientWidth"]} == {}
    assert scrapes.count > 3
    api_labels = {value for _, labels in scrapes.last["api"] for _, value in labels}
    assert not any("<" in value and value != "<unmatched>" for value in api_labels), api_labels
    assert "PURGE" not in api_labels
    # The worker timed every part (2 MRC shards, 4 sweep candidates) and every stage attempt,
    # the sharded ones too: they were missing, attempts outnumbering durations. (A task records
    # its time just after it commits the job's end: scrape until the last one is in.)
    def timings() -> dict[str, float]:
        scrapes.scrape()
        found = scrapes.last["worker"]

        def total(name: str, stage: str) -> float:
            return sum(value for (sample, labels), value in found.items()
                       if sample == name and ("stage", stage) in labels)

        return {"mrc parts": total("rift_part_duration_seconds_count", "mrc"),
                "finetune parts": total("rift_part_duration_seconds_count", "finetune"),
                **{f"{stage} attempts not timed": total("rift_stage_attempts_total", stage)
                   - total("rift_stage_duration_seconds_count", stage)
                   for stage in ("mrc", "finetune", "interpolate")}}

    expected = {"mrc parts": 2, "finetune parts": 4, "mrc attempts not timed": 0,
                "finetune attempts not timed": 0, "interpolate attempts not timed": 0}
    settle = time.monotonic() + 10
    while (timed := timings()) != expected and time.monotonic() < settle:
        time.sleep(0.2)
    assert timed == expected
