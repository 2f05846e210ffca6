"""``GET /v1/jobs/{id}/report`` served by a real uvicorn server and rendered by headless Chromium:
the page's chart elements are in the DOM, a screenshot is taken, the console stays silent and the
page requests nothing (all inline). ``/docs`` is loaded the same way and must not reach any
host but the service. The job's results are written into the database the way a worker's
``finish_stage`` writes them, so no worker is needed here (the service test runs a real one)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from persistence.models import Artifact, EpochMetric, InterpolationPoint, Job, MRCRow
from tests.api.browser import StaticPage, StaticSite, layout_of, load_page
from tests.api.helpers import Api, digits_config, upload_checkpoint

MODULES = ["conv1", "conv2", "conv3", "fc"]
ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]


def finished_job(api: Api, checkpoint: Path, *, candidates: bool = True) -> str:
    """A job with an MRC table, epochs, an α curve, a candidate curve and a manifest."""
    uploaded = upload_checkpoint(api, checkpoint)
    created = api.client.post("/v1/jobs", json={"checkpoint_id": uploaded["id"],
                                                "config": digits_config()})
    assert created.status_code == 201, created.text
    job_id = str(created.json()["id"])
    points = [{"alpha": a, "clean_accuracy": 90 + 3 * a, "robust_accuracy": 60 - 2 * a * a}
              for a in ALPHAS]
    other = [{"alpha": a, "clean_accuracy": 90 + 1 * a, "robust_accuracy": 60 - 6 * a}
             for a in ALPHAS]
    manifest = {"job_id": job_id, "checkpoint_sha256": uploaded["sha256"], "seed": 0}
    store = api.settings.build_object_store()  # the app's local store: same folder
    stored = store.put_bytes(f"jobs/{job_id}/manifest.json",
                                     json.dumps(manifest).encode(), content_type="application/json")
    with api.sessions() as session:
        for position, module in enumerate(MODULES):
            session.add(MRCRow(job_id=job_id, position=position, module=module, parameters=100,
                               mrc=0.05 * (position + 1) ** 2, worst_robust_loss=1.5,
                               robust_accuracy_at_worst=50.0,
                               robust_accuracy_drop=4.0 * position))
        for epoch in (1, 2, 3):
            session.add(EpochMetric(job_id=job_id, epoch=epoch, lr=0.01, train_loss=1.0 / epoch,
                                    train_accuracy=80.0 + epoch, val_accuracy=79.0 + epoch % 2))
        for position, point in enumerate(points):
            session.add(InterpolationPoint(job_id=job_id, position=position, **point))
        session.add(Artifact(job_id=job_id, name="manifest.json", storage_key=stored.key,
                             size=stored.size, sha256=stored.sha256,
                             content_type="application/json"))
        job = session.get(Job, job_id)
        assert job is not None
        job.status, job.selected_module, job.chosen_alpha = "succeeded", "conv1", 0.5
        job.metrics = {"before": {"clean_accuracy": 90.0, "robust_accuracy": 60.0},
                       "after": {"clean_accuracy": 91.5, "robust_accuracy": 59.5},
                       **({"candidates": [{"module": "fc", "interpolation": other,
                                           "chosen_alpha": 0.25}]} if candidates else {})}
        session.commit()
    return job_id


def _count(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text))


def _shapes(element: str, series: str, dom: str) -> int:
    """Bars or dots the page's compact chart draws in one ``path.{element}`` of ``series``:
    each is a closed subpath of its ``d``."""
    paths = re.findall(rf'<path class="{element}" data-series="{series}" d="([^"]*)"', dom)
    return sum(d.count("Z") for d in paths)


def test_report_page_in_headless_chromium(report_api: Api, small_cnn_file: Path,
                                          tmp_path: Path) -> None:
    api = report_api
    job_id = finished_job(api, small_cnn_file)
    url = f"{api.url}/v1/jobs/{job_id}/report"
    assert api.client.get(f"/v1/jobs/{job_id}").json()["links"]["report"] == f"/v1/jobs/{job_id}/report"
    direct = api.client.get(url)
    assert direct.status_code == 200
    assert direct.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in direct.headers["content-security-policy"]

    screenshot = tmp_path / "report.png"
    headers = {name: direct.headers[name] for name in ("content-type", "content-security-policy")}
    with StaticPage(direct.content, headers) as served:
        page = load_page(served.url, screenshot=screenshot)
    url = served.url
    dom = page.dom
    # Figures C.1–C.4: one MRC bar and one drop bar per module (one path per series on the
    # page), the selected module highlighted.
    for chart in ("mrc", "robust-drop", "finetune", "alpha", "tradeoff"):
        assert f'data-chart="{chart}"' in dom, chart
    assert _shapes("bars", "MRC", dom) == len(MODULES)
    assert _shapes("bars", "robust accuracy drop", dom) == len(MODULES)
    # Fig C.5: a curve per candidate (the job's module first), θ_AT's robustness, chosen α marked.
    assert _count(r'<path class="series" data-series="conv1"', dom) == 1
    assert _count(r'<path class="series" data-series="fc"', dom) == 1
    assert 'data-label="θ_AT robustness"' in dom and 'data-label="θ_AT robust accuracy"' in dom
    assert 'data-label="α = 0.5"' in dom and 'data-label="α = 0.25"' in dom
    assert _shapes("points", "conv1", dom) >= len(ALPHAS)
    # The MRC table (selected row flagged), both curves' tables and the manifest.
    assert _count(r"<tr class=\"selected\"><td class=\"row\">1</td><td class=\"name\">conv1"
                  r"<span class=\"mark\"> \(fine-tuned\)</span></td>",
                  dom) == 1
    assert "data-curve=\"fc\"" in dom and "data-curve=\"conv1\"" in dom
    assert '"checkpoint_sha256"' in dom
    # Self-contained: no script, no request beyond the page itself, nothing on the console.
    assert "<script" not in dom
    assert url in page.requests  # the NetLog filter sees the page's own requests...
    assert page.external_requests() == []
    assert [u for u in page.requests if u != url] == []  # ... and there is no other
    assert page.console == []
    assert screenshot.stat().st_size > 10_000  # a real picture, not a blank page

    # /docs in the same browser setup: it must not reach any host but the service itself.
    docs = load_page(f"{api.url}/docs")
    assert docs.external_requests() == []
    assert "swagger" in docs.dom.lower()


def test_report_of_a_job_without_results(report_api: Api, small_cnn_file: Path) -> None:
    uploaded = upload_checkpoint(report_api, small_cnn_file)
    job = report_api.client.post("/v1/jobs", json={"checkpoint_id": uploaded["id"],
                                                      "config": digits_config()}).json()
    page = report_api.client.get(f"/v1/jobs/{job['id']}/report")
    assert page.status_code == 200
    assert "No results yet" in page.text and "No manifest recorded" in page.text
    missing = report_api.client.get("/v1/jobs/nope/report")
    assert missing.status_code == 404
    assert missing.json()["error"]["field"] == "job_id"


def test_candidates_in_metrics_of_other_shapes_are_skipped() -> None:
    from api.routes.job_report import candidate_curves

    good = {"name": "m", "points": [{"alpha": 0.0, "clean_accuracy": 1, "robust_accuracy": 2}]}
    curves = candidate_curves({"candidates": [good, "junk", {"module": 3}, {"module": "x"}]})
    assert [c.name for c in curves] == ["m"]
    assert candidate_curves({"candidates": {"not": "a list"}}) == []
    assert candidate_curves(None) == []


def test_report_fits_a_narrow_screen_with_long_module_names(report_api: Api,
                                                            small_cnn_file: Path) -> None:
    api = report_api
    job_id = finished_job(api, small_cnn_file)
    long_name = "backbone." + "stages.3.blocks.2." * 10 + "attn.qkv"
    with api.sessions() as session:
        session.add(MRCRow(job_id=job_id, position=len(MODULES), module=long_name,
                           parameters=10, mrc=0.5, worst_robust_loss=1.0,
                           robust_accuracy_at_worst=40.0, robust_accuracy_drop=2.0))
        job = session.get(Job, job_id)
        assert job is not None
        job.selected_module = long_name
        session.commit()
    page = api.client.get(f"/v1/jobs/{job_id}/report").text
    assert "name='viewport'" in page
    # Layout is measured by a script the page itself may not run (its CSP forbids scripts):
    # this copy drops the CSP and records the document's scroll width against the viewport's.
    measured = re.sub(r"<meta http-equiv='Content-Security-Policy'[^>]*>", "", page).replace(
        "</body>", "<script>document.body.dataset.scrollWidth = "
        "document.documentElement.scrollWidth; document.body.dataset.viewportWidth = "
        "document.documentElement.clientWidth;</script></body>")
    with StaticPage(measured.encode(), {"content-type": "text/html; charset=utf-8"}) as served:
        loaded = load_page(served.url, window="320,1200")  # headless Chromium's least: 500
    widths = re.search(r'data-scroll-width="(\d+)" data-viewport-width="(\d+)"', loaded.dom)
    assert widths is not None, loaded.dom[:2000]
    scroll_width, viewport_width = map(int, widths.groups())
    assert viewport_width <= 500, viewport_width
    # Nothing wider than the screen: no sideways scrolling (before: 1789 px at 485).
    assert scroll_width <= viewport_width, (scroll_width, viewport_width)
    assert loaded.console == []


def test_report_of_a_curve_with_unmeasured_points(report_api: Api, small_cnn_file: Path) -> None:
    job_id = finished_job(report_api, small_cnn_file, candidates=False)
    with report_api.sessions() as session:
        for point in session.query(InterpolationPoint).filter_by(job_id=job_id):
            if point.alpha in (0.0, 0.25):  # never attacked by the exact α selection
                point.robust_accuracy = None
                point.robust_accuracy_at_most = 55.0 if point.alpha else None
        session.commit()
    page = report_api.client.get(f"/v1/jobs/{job_id}/report")
    assert page.status_code == 200, page.text  # before: 500 (float(None) at α = 0)
    assert "≤ 55" in page.text and 'data-chart="alpha"' in page.text
    curves = report_api.client.get(f"/v1/jobs/{job_id}/curves").json()["interpolation"]
    assert [p["robust_accuracy"] for p in curves][:2] == [None, None]


def test_report_charts_of_hundreds_of_modules_keep_their_size(report_api: Api,
                                                              small_cnn_file: Path) -> None:
    from tests.api.report_checks import page_problems

    api = report_api
    job_id = finished_job(api, small_cnn_file)
    long_name = "backbone." + "stages.3.blocks.2." * 6 + "attn.qkv"
    with api.sessions() as session:
        for position in range(len(MODULES), 300):
            session.add(MRCRow(job_id=job_id, position=position, module=f"blocks.{position}.conv",
                               parameters=10, mrc=0.001 * position, worst_robust_loss=1.0,
                               robust_accuracy_at_worst=40.0, robust_accuracy_drop=0.01 * position))
        job = session.get(Job, job_id)
        assert job is not None
        job.selected_module = long_name
        session.commit()
    page = api.client.get(f"/v1/jobs/{job_id}/report")
    assert page_problems(page.text) == []
    headers = {name: page.headers[name] for name in ("content-type", "content-security-policy")}
    with StaticSite({"/report": (page.content, headers)}, frame=(1200, 800)) as site:
        loaded = load_page(site.url)
    assert loaded.console == []
    layout = layout_of(loaded.dom)["/report"]
    # Every chart at its own size: the MRC chart of 300 modules (6690 px) was scaled to the
    # page, 1136 × 54 px; it scrolls sideways in its box now, and the page does not.
    charts = {c["chart"]: c for c in layout["charts"]}  # type: ignore[attr-defined]
    assert charts["mrc"]["natural"] > 6000
    assert all(c["width"] >= c["natural"] - 1 for c in charts.values()), charts
    assert layout["scrollWidth"] == layout["clientWidth"]
    # No text drawn past a chart's edge (the α chart's title with the module name was).
    assert layout["outside"] == []


def test_report_dates_the_run_and_states_the_rule_its_alpha_met(report_api: Api,
                                                                  small_cnn_file: Path) -> None:
    # A saved page read later had no date, and showed θ_AT's and RiFT's accuracies without the
    # tolerance the chosen α was held to nor the change between them.
    from datetime import UTC, datetime

    job_id = finished_job(report_api, small_cnn_file, candidates=False)
    with report_api.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.started_at = datetime(2026, 3, 1, 9, 0, 5, tzinfo=UTC)
        job.finished_at = datetime(2026, 3, 1, 9, 42, 0, tzinfo=UTC)
        job.spec = {**job.spec, "interpolation": {**job.spec["interpolation"],
                                                  "robust_tolerance": 0.5}}
        session.commit()
    created = datetime.fromisoformat(report_api.client.get(f"/v1/jobs/{job_id}").json()["created_at"])
    page = report_api.client.get(f"/v1/jobs/{job_id}/report").text
    when = (f"<dt>created / started / finished</dt><dd>"
            f"{created.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC / 2026-03-01 09:00:05 UTC / "
            "2026-03-01 09:42:00 UTC</dd>")
    assert when in page
    assert "<dt>RiFT − θ_AT (points, test split)</dt><dd>clean +1.5 / robust −0.5</dd>" in page
    assert "<dt>robust tolerance</dt><dd>0.5 points: the chosen α keeps robust accuracy ≥ " in page
