"""The report page and the JSON read routes of a job at the scale a demanding user reaches: a
sweep of 16 candidates (4 modules × a 4-rate ``lr_grid``), each with a 101-point α curve
(``alpha_step`` 0.01), an MRC table of 500 modules with 200+ character dotted names, warnings
past the 100 shown, the 32 labels a job may have; labels, module names and warning messages hold
markup and non-ASCII text. Written into the database as a worker writes them (no worker runs)."""

from __future__ import annotations

import re
from pathlib import Path

from persistence.models import (
    EpochMetric,
    InterpolationPoint,
    Job,
    JobEvent,
    MRCRow,
    SweepCandidate,
    utcnow,
)
from tests.api.browser import StaticPage, chromium_binary, load_page
from tests.api.helpers import Api, digits_config, upload_checkpoint
from tests.api.report_checks import HOSTILE, hostile_module_name, page_problems

MODULE_COUNT = 500
RATES = [0.001, 0.003, 0.01, 0.03]
SWEEP_MODULES = 4
ALPHAS = [round(i * 0.01, 10) for i in range(101)]
WARNINGS = 130


def big_sweep_job(api: Api, checkpoint: Path) -> str:
    uploaded = upload_checkpoint(api, checkpoint)
    labels = {f"k{i:02d}.{'x' * 50}": (HOSTILE * 6)[:255] for i in range(32)}
    config = digits_config(finetune={"epochs": 3, "candidates": SWEEP_MODULES, "lr_grid": RATES},
                           interpolation={"alpha_step": 0.01})
    created = api.client.post("/v1/jobs", json={"checkpoint_id": uploaded["id"], "config": config,
                                                "labels": labels})
    assert created.status_code == 201, created.text
    job_id = str(created.json()["id"])
    names = [hostile_module_name(i) for i in range(MODULE_COUNT)]
    assert min(len(n) for n in names) > 200
    with api.sessions() as session:
        for position, module in enumerate(names):
            session.add(MRCRow(job_id=job_id, position=position, module=module,
                               parameters=1000 + position, mrc=0.001 * position,
                               worst_robust_loss=1.5, robust_accuracy_at_worst=50.0,
                               robust_accuracy_drop=0.02 * position))
        for epoch in (1, 2, 3):
            session.add(EpochMetric(job_id=job_id, epoch=epoch, lr=0.01, train_loss=1.0 / epoch,
                                    train_accuracy=80.0 + epoch, val_accuracy=79.0 + epoch % 2))
        index = 0
        for module in names[:SWEEP_MODULES]:
            for rate in RATES:
                points = [{"alpha": a, "clean_accuracy": 80 + 5 * a + index * 0.1,
                           "robust_accuracy": 45 - 3 * a * a - index * 0.05} for a in ALPHAS]
                session.add(SweepCandidate(
                    job_id=job_id, candidate=index, module=module, lr=rate, status="done",
                    attempts=1, created_at=utcnow(),
                    result={"outcome": {"module": module, "lr": rate, "chosen_alpha": 0.37,
                                        "clean_accuracy": 82.0, "robust_accuracy": 44.0,
                                        "best_epoch": 2, "points": points}}))
                index += 1
        chosen_points = [{"alpha": a, "clean_accuracy": 80 + 5 * a,
                          "robust_accuracy": 45 - 3 * a * a} for a in ALPHAS]
        for position, point in enumerate(chosen_points):
            session.add(InterpolationPoint(job_id=job_id, position=position, **point))
        for number in range(WARNINGS):
            session.add(JobEvent(job_id=job_id, kind="warning", payload={
                "stage": "finetune", "candidate": number % 16,
                "message": f"warning {number}: {HOSTILE} in {names[number % MODULE_COUNT]}"}))
        job = session.get(Job, job_id)
        assert job is not None
        job.status, job.selected_module, job.chosen_alpha = "succeeded", names[0], 0.37
        job.metrics = {"before": {"clean_accuracy": 80.0, "robust_accuracy": 45.0},
                       "after": {"clean_accuracy": 81.9, "robust_accuracy": 44.6},
                       "sweep": {"chosen": 0, "candidates": 16}}
        session.commit()
    return job_id


def _legend_entries(page: str, chart: str) -> list[str]:
    """The whole names (tooltips) of a chart's legend entries."""
    svg = page.split(f'data-chart="{chart}"', 1)[1].split("</svg>", 1)[0]
    legend = svg.split('<g class="legend">', 1)[1].split("</g>", 1)[0]
    return re.findall(r"<title>([^<]*)</title>", legend)


def test_a_big_sweep_jobs_report_and_json_routes(report_api: Api, small_cnn_file: Path) -> None:
    api = report_api
    job_id = big_sweep_job(api, small_cnn_file)
    names = [hostile_module_name(i) for i in range(MODULE_COUNT)]
    # The JSON routes: whole, whatever the page shortens.
    job = api.client.get(f"/v1/jobs/{job_id}")
    assert job.status_code == 200 and len(job.json()["labels"]) == 32
    mrc = api.client.get(f"/v1/jobs/{job_id}/mrc")
    assert mrc.status_code == 200
    assert [row["module"] for row in mrc.json()["rows"]] == names
    curves = api.client.get(f"/v1/jobs/{job_id}/curves")
    assert curves.status_code == 200
    candidates = curves.json()["candidates"]
    assert len(candidates) == 16 and all(len(c["points"]) == len(ALPHAS) for c in candidates)
    events = api.client.get(f"/v1/jobs/{job_id}/events")
    assert events.status_code == 200

    answer = api.client.get(f"/v1/jobs/{job_id}/report")
    assert answer.status_code == 200
    page = answer.text
    # Escaped everywhere (labels, module names, warnings): only the page's own elements, no
    # event handler; linear in the rows, under the bound below (2.2 MB before the page's charts
    # drew one path per series and numbered the modules instead of naming each 6 times, about
    # 0.5 MB since; tests/reporting/test_page_size.py bounds the 21-point case).
    assert page_problems(page, max_bytes=600_000) == []
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("k31." + "x" * 50 + "=") == 1  # the summary lists every label once
    # Every row and curve is there: the MRC table's 500 (folded, after the 25 of lowest MRC),
    # 16 curve tables of 101 α.
    folded = page.split("<details class='mrc-all'>", 1)[1].split("</details>", 1)[0]
    assert folded.count("<td class='name'>") == MODULE_COUNT
    assert page.count("<td class='name'>") == MODULE_COUNT + 25
    assert page.count("<div class='curve'") == 16
    assert page.count("<tr><td>") + page.count("<tr class=selected><td>") == 16 * len(ALPHAS)
    # The trade-off chart: one legend entry per candidate, 16 rings, few readable labels;
    # the 9th to 16th curves are dashed (the palette has 8 colours).
    legend = _legend_entries(page, "tradeoff")
    assert len(legend) == 16 and len(set(legend)) == 16
    trade = page.split('data-chart="tradeoff"', 1)[1].split("</svg>", 1)[0]
    assert trade.count('<circle class="mark"') == 16
    assert 1 <= trade.count('class="mark-label"') < 16
    assert trade.count('<path class="series"') == 16
    assert len(re.findall(r'<path class="series"[^>]*stroke-dasharray', trade)) == 8
    # 100 warnings shown (the API's bound), most folded; the other 30 are counted.
    assert "<details class='more-warnings'>" in page
    assert f"{WARNINGS - 100} more warning(s) not shown" in page


def test_a_big_sweep_jobs_report_in_headless_chromium(report_api: Api,
                                                      small_cnn_file: Path) -> None:
    chromium_binary()  # skips where Chromium is absent
    job_id = big_sweep_job(report_api, small_cnn_file)
    answer = report_api.client.get(f"/v1/jobs/{job_id}/report")
    headers = {name: answer.headers[name] for name in ("content-type", "content-security-policy")}
    with StaticPage(answer.content, headers) as served:
        page = load_page(served.url)
    assert page.console == []
    assert [url for url in page.requests if url != served.url] == []
    # The trade-off's 16, the α chart's two (clean, robust) and the best fine-tuning epoch.
    assert page.dom.count('<circle class="mark"') == 16 + 2 + 1
