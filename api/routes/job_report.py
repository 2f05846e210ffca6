"""``GET /v1/jobs/{id}/report``: the job's results as one self-contained HTML page (inline SVG
charts, no script, nothing fetched from elsewhere), drawn by :mod:`reporting` from the database
rows and the job's ``manifest.json``; a sweep's candidate curves are drawn side by side. It works
for a running job too (what exists so far: a running MRC stage's rows scored so far,
:mod:`persistence.mrc_tables`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from api.deps import CallerDep, SessionDep, StoreDep
from api.routes.jobs import load_job
from persistence.job_warnings import warnings_of
from persistence.jobs import (
    get_artifact,
    get_epoch_metrics,
    get_interpolation_points,
    get_sweep_candidates,
)
from persistence.models import Job
from persistence.mrc_tables import read_mrc_table
from persistence.storage import StoreError
from reporting.charts import Curve, Splits, sweep_curves
from reporting.page import (
    CONTENT_SECURITY_POLICY,
    ReportData,
    ReportWarning,
    failure_line,
    render_report,
)

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["results"])

MANIFEST = "manifest.json"


def candidate_curves(metrics: Mapping[str, Any] | None) -> list[Curve]:
    """Curves of further candidate modules a sweep recorded in ``metrics["candidates"]``: a list
    of ``{"module" (or "name"), "interpolation" (or "points"): [{alpha, clean_accuracy,
    robust_accuracy}], "chosen_alpha"?}``; entries of another shape are skipped."""
    found = (metrics or {}).get("candidates")
    curves: list[Curve] = []
    if not isinstance(found, list):
        return curves
    for entry in found:
        if not isinstance(entry, Mapping):
            continue
        points = entry.get("interpolation", entry.get("points"))
        name = entry.get("module", entry.get("name"))
        if not isinstance(points, list) or not isinstance(name, str):
            continue
        usable = [p for p in points if isinstance(p, Mapping)
                  and all(isinstance(p.get(k), int | float)
                          for k in ("alpha", "clean_accuracy", "robust_accuracy"))]
        chosen = entry.get("chosen_alpha")
        curves.append(Curve(name, usable, float(chosen) if isinstance(chosen, int | float) else None))
    return curves


def _sweep(session: Session, job: Job) -> list[Curve]:
    """A sweep's candidate curves, the chosen one first (none for a one-candidate job)."""
    rows = get_sweep_candidates(session, job.id)
    outcomes = [{"module": row.module, "lr": row.lr,
                 **((row.result or {}).get("outcome") or {"points": []})} for row in rows]
    sweep = (job.metrics or {}).get("sweep")
    chosen = sweep.get("chosen") if isinstance(sweep, dict) else None
    return sweep_curves(outcomes, chosen if isinstance(chosen, int) else None)


def _with_main_first(main: Curve | None, others: Sequence[Curve]) -> list[Curve]:
    rest = [c for c in others if main is None or c.name != main.name]
    return ([main] if main is not None else []) + rest


def _robust_tolerance(spec: Mapping[str, Any] | None) -> float | None:
    """``interpolation.robust_tolerance`` of the job's configuration, None where it is absent."""
    section = (spec or {}).get("interpolation")
    value = section.get("robust_tolerance") if isinstance(section, Mapping) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@router.get("/{job_id}/report", response_class=HTMLResponse,
            summary="The job's report page (HTML with inline SVG charts, works offline)")
def read_report(job_id: str, session: SessionDep, caller: CallerDep, store: StoreDep) -> HTMLResponse:
    job = load_job(session, caller, job_id)
    mrc = read_mrc_table(session, job.id)
    mrc_rows = [{"position": r.position, "module": r.module, "parameters": r.parameters,
                 "mrc": r.mrc, "worst_robust_loss": r.worst_robust_loss,
                 "robust_accuracy_at_worst": r.robust_accuracy_at_worst,
                 "robust_accuracy_drop": r.robust_accuracy_drop, "passes": r.passes,
                 "exact": r.exact, "zero_gradient": r.zero_gradient}
                for r in mrc.rows]
    epochs = [{"epoch": e.epoch, "train_accuracy": e.train_accuracy, "val_accuracy": e.val_accuracy,
               "train_loss": e.train_loss} for e in get_epoch_metrics(session, job.id)]
    points = [{"alpha": p.alpha, "clean_accuracy": p.clean_accuracy,
               "robust_accuracy": p.robust_accuracy,
               "robust_accuracy_at_most": p.robust_accuracy_at_most}
              for p in get_interpolation_points(session, job.id)]
    main = Curve(job.selected_module or "fine-tuned module", points, job.chosen_alpha) if points else None
    manifest_row = get_artifact(session, job.id, MANIFEST)
    manifest: dict[str, Any] | None = None
    if manifest_row is not None:
        try:
            manifest = json.loads(store.get_bytes(manifest_row.storage_key))
        except (StoreError, ValueError):
            logger.warning("job %s: manifest.json could not be read", job.id, exc_info=True)
    warnings = warnings_of(session, job.id)
    data = ReportData(
        job_id=job.id, status=job.status, selected_module=job.selected_module,
        chosen_alpha=job.chosen_alpha, metrics=job.metrics or {}, mrc_rows=mrc_rows,
        mrc_complete=mrc.complete, mrc_total=mrc.modules_total, epochs=epochs,
        curves=_sweep(session, job) or _with_main_first(main, candidate_curves(job.metrics)),
        manifest=manifest,
        error=failure_line(job.error_code, job.error_message, job.error_field),
        stage=job.stage, stage_progress=job.stage_progress, progress_message=job.progress_message,
        splits=Splits.of_config(job.spec),
        warnings=[ReportWarning(w.stage, w.message, w.count, w.candidate)
                  for w in warnings.items],
        warnings_total=warnings.total, labels=job.label_dict,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        robust_tolerance=_robust_tolerance(job.spec))
    return HTMLResponse(render_report(data),
                        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})
