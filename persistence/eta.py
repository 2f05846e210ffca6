"""``estimated_finish`` of a job: the work left, priced at the throughput its own finished stages
(and the running stage's progress) have measured.

Work per stage is the service's cost estimate (:func:`persistence.cost.estimate_cost`, in
example-passes, sweeps counted once per candidate): the ``mrc`` stage is the adversarial set plus
the ascent, ``finetune`` and ``interpolate`` their own parts. Only ratios between stages matter
here, since seconds per example-pass is measured on the job itself. Before anything has been
measured (queued, or the first stage below 2 % progress) there is no estimate: a guess from
another machine would be worse than none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from persistence.cost import BUILTIN_SIZES, estimate_cost
from persistence.models import Job, JobStage, JobStatus, StageStatus

if TYPE_CHECKING:  # persistence.jobs reads rows; this module only needs their shape
    from persistence.jobs import JobSummary, StageSummary

#: (training, test) examples assumed for an uploaded dataset (its size is not on the job row):
#: only the stages' ratios matter, and these keep every stage above zero.
DEFAULT_SIZES = (10_000, 2_000)
#: Modules assumed when neither the MRC table nor the spec says how many are scored.
DEFAULT_MODULES = 20
#: Progress below this is too little to time a stage by.
MIN_PROGRESS = 0.02


def stage_work_estimate(spec: Mapping[str, Any], num_modules: int | None = None
                        ) -> dict[str, float]:
    """Example-passes per stage (``mrc``, ``finetune``, ``interpolate``) for a job spec."""
    dataset = spec.get("dataset")
    name = dataset.get("name") if isinstance(dataset, Mapping) else None
    cost = estimate_cost(spec, num_modules=num_modules or DEFAULT_MODULES,
                         dataset_examples=None if name in BUILTIN_SIZES else DEFAULT_SIZES)
    # The preflight runs in the first stage, before its adversarial set.
    return {"mrc": float(cost.preflight.total + cost.adversarial_set.total + cost.mrc.total),
            "finetune": float(cost.finetune.total),
            "interpolate": float(cost.interpolation.total)}


def _seconds(stage: JobStage | StageSummary) -> float | None:
    if stage.started_at is None or stage.finished_at is None:
        return None
    return max((stage.finished_at - stage.started_at).total_seconds(), 0.0)


def estimate_finish(job: Job | JobSummary, stages: Sequence[JobStage | StageSummary],
                    now: datetime, num_modules: int | None = None) -> datetime | None:
    """When the job should end at the pace measured so far; None if it ended or nothing has been
    measured yet."""
    if job.status != JobStatus.RUNNING or job.spec is None:
        return None
    work = stage_work_estimate(job.spec, num_modules)
    measured_work = measured_seconds = 0.0
    remaining = 0.0
    for stage in stages:
        units = work.get(str(stage.stage), 0.0)
        if stage.status == StageStatus.DONE:
            seconds = _seconds(stage)
            if seconds is not None:
                measured_work += units
                measured_seconds += seconds
        elif stage.stage == job.stage and stage.status == StageStatus.RUNNING:
            progress = min(max(job.stage_progress, 0.0), 1.0)
            if progress >= MIN_PROGRESS and stage.started_at is not None:
                measured_work += units * progress
                measured_seconds += max((now - stage.started_at).total_seconds(), 0.0)
            remaining += units * (1 - progress)
        elif stage.status == StageStatus.PENDING:
            remaining += units
    if measured_work <= 0 or measured_seconds <= 0:
        return None
    return now + timedelta(seconds=remaining * measured_seconds / measured_work)

