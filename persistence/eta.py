"""``estimated_finish`` of a job: the work left, priced at the throughput its own finished stages
(and the running stage's progress) have measured.

Work is counted in example-passes (one example through the model, forward or backward) from the
job's spec alone, per stage:

- ``mrc``: the adversarial set (``num_examples`` × (2 × attack steps + 1)) plus, per module,
  ``mrc.steps`` ascent passes (forward, backward, and the forward measuring the loss);
- ``finetune``: ``epochs`` × (2 × training examples + validation examples);
- ``interpolate``: per α, the test examples clean (1) and attacked (2 × steps + 1).

This is :func:`stage_work_estimate`, a small stand-in for the service's cost estimate
(``persistence/cost.py`` on the auth branch; the merge should price stages with that one). Only
ratios between stages matter here, since seconds per example-pass is measured on the job itself.
Before anything has been measured (queued, or the first stage below 2 % progress) there is no
estimate: a guess from another machine would be worse than none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from persistence.models import Job, JobStage, JobStatus, StageStatus

if TYPE_CHECKING:  # persistence.jobs reads rows; this module only needs their shape
    from persistence.jobs import JobSummary, StageSummary

#: (training, test) examples of the built-in datasets; uploaded ones count as DEFAULT_SIZES.
BUILTIN_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000),
                 "svhn": (73_257, 26_032), "mnist": (60_000, 10_000), "digits": (1_438, 359)}
DEFAULT_SIZES = (10_000, 2_000)
#: Modules assumed when neither the MRC table nor the spec says how many are scored.
DEFAULT_MODULES = 20
#: Progress below this is too little to time a stage by.
MIN_PROGRESS = 0.02


def _section(spec: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = spec.get(name)
    return value if isinstance(value, Mapping) else {}


def _number(section: Mapping[str, Any], key: str, default: float) -> float:
    value = section.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def stage_work_estimate(spec: Mapping[str, Any], num_modules: int | None = None
                        ) -> dict[str, float]:
    """Example-passes per stage (``mrc``, ``finetune``, ``interpolate``) for a job spec."""
    attack, mrc = _section(spec, "attack"), _section(spec, "mrc")
    finetune, interpolation = _section(spec, "finetune"), _section(spec, "interpolation")
    dataset, evaluation = _section(spec, "dataset"), _section(spec, "evaluation")
    sizes = BUILTIN_SIZES.get(str(dataset.get("name")), DEFAULT_SIZES)
    validation = sizes[0] * _number(dataset, "validation_fraction", 0.1)
    train, test = sizes[0] - validation, float(sizes[1])
    cap = evaluation.get("max_examples")
    if isinstance(cap, int) and not isinstance(cap, bool):
        test = min(test, cap)
    attack_passes = 2 * _number(attack, "steps", 10) + 1
    listed = mrc.get("modules")
    modules = (num_modules or (len(listed) if isinstance(listed, list) and listed else None)
               or DEFAULT_MODULES)
    examples = _number(mrc, "num_examples", 1024)
    alphas = math.floor(1 / max(_number(interpolation, "alpha_step", 0.05), 1e-4) + 1e-9) + 1
    return {
        "mrc": examples * attack_passes + modules * _number(mrc, "steps", 10) * examples * 3,
        "finetune": _number(finetune, "epochs", 10) * (2 * train + validation),
        "interpolate": alphas * test * (1 + attack_passes),
    }


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

