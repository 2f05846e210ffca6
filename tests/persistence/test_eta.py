"""estimated_finish: the work left at the pace the job itself measured."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from persistence.eta import estimate_finish, stage_work_estimate
from persistence.models import Job, JobStage

SPEC = {"dataset": {"name": "digits"}, "attack": {"steps": 2}, "mrc": {"steps": 1},
        "finetune": {"epochs": 1}, "interpolation": {"alpha_step": 0.5}}
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _job(status: str, stage: str | None, progress: float, stages: list[JobStage]) -> Job:
    return Job(id="j", status=status, stage=stage, stage_progress=progress, spec=SPEC,
               checkpoint_id="c")


def _stage(name: str, status: str, started: float | None = None, finished: float | None = None
           ) -> JobStage:
    def ago(seconds: float | None) -> datetime | None:
        return None if seconds is None else NOW - timedelta(seconds=seconds)

    return JobStage(stage=name, status=status, started_at=ago(started), finished_at=ago(finished))


def test_work_grows_with_the_budget() -> None:
    small = stage_work_estimate(SPEC, num_modules=4)
    bigger = stage_work_estimate({**SPEC, "finetune": {"epochs": 3}}, num_modules=4)
    assert bigger["finetune"] == 3 * small["finetune"]
    assert bigger["mrc"] == small["mrc"] and bigger["interpolate"] == small["interpolate"]
    assert stage_work_estimate(SPEC, num_modules=8)["mrc"] > small["mrc"]
    assert set(small) == {"mrc", "finetune", "interpolate"}


def test_work_is_the_cost_estimate_with_sweeps_and_uploads_counted() -> None:
    single = stage_work_estimate(SPEC, num_modules=4)
    sweep = stage_work_estimate({**SPEC, "finetune": {"epochs": 1, "candidates": 2,
                                                      "lr_grid": [0.01, 0.001]}}, num_modules=4)
    # Four (module, lr) candidates: four fine-tunes and four curves, one MRC stage.
    assert sweep["finetune"] == 4 * single["finetune"]
    assert sweep["interpolate"] == 4 * single["interpolate"]
    assert sweep["mrc"] == single["mrc"]
    uploaded = stage_work_estimate({**SPEC, "dataset": {"name": "npz", "path": "x.npz"}})
    assert all(units > 0 for units in uploaded.values())


def test_finish_is_the_remaining_work_at_the_measured_pace() -> None:
    work = stage_work_estimate(SPEC)
    # MRC took 100 s; fine-tuning is half done after 30 s.
    stages = [_stage("mrc", "done", 130, 30), _stage("finetune", "running", 30),
              _stage("interpolate", "pending")]
    job = _job("running", "finetune", 0.5, stages)
    pace = (100 + 30) / (work["mrc"] + 0.5 * work["finetune"])
    expected = NOW + timedelta(seconds=pace * (0.5 * work["finetune"] + work["interpolate"]))
    found = estimate_finish(job, stages, NOW)
    assert found is not None and abs((found - expected).total_seconds()) < 1e-3
    assert found > NOW


def test_no_estimate_before_anything_was_measured_or_after_the_end() -> None:
    fresh = [_stage("mrc", "running", 5), _stage("finetune", "pending"),
             _stage("interpolate", "pending")]
    assert estimate_finish(_job("running", "mrc", 0.0, fresh), fresh, NOW) is None
    assert estimate_finish(_job("queued", None, 0.0, fresh), fresh, NOW) is None
    done = [_stage(s, "done", 10, 5) for s in ("mrc", "finetune", "interpolate")]
    assert estimate_finish(_job("succeeded", None, 1.0, done), done, NOW) is None
    started = [_stage("mrc", "running", 10), *fresh[1:]]
    assert estimate_finish(_job("running", "mrc", 0.5, started), started, NOW) is not None
