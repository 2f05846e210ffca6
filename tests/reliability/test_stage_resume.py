"""A stage taken over by another worker resumes from what the stopped attempt stored, where that
is exact: the MRC stage scores only the modules whose rows (``module_scored`` events carrying the
digest of the adversarial set and settings they were computed from) are not stored yet, the
fine-tune stage trains only the epochs after its last stored epoch state (``finetune_resumed``),
and the interpolation stage (``curve: "full"``) attacks only the α points whose counts
(``alpha_evaluated``) are not stored yet. A sharded MRC stage does so per shard: a shard handed
back midway scores only its own modules not stored on its next attempt.

Before, the second worker scored every module (attacked every α) again (hours of a long MRC stage on a spot
machine). Real worker processes (solo pool), Postgres and Redis; a lease of 60 s so that its
expiry cannot explain what is seen.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs
from persistence.models import Job
from persistence.object_keys import epoch_state_key, epoch_states_prefix
from persistence.stage_shards import list_shards
from persistence.storage import ObjectStore
from rift.finetune_resume import decode_epoch_state
from rift.interpolation import alpha_grid
from tests.reliability.test_worker_shutdown import (
    LEASE_S,
    assert_same_results,
    events,
    exit_after,
    stages_of,
)
from tests.service_fixtures import WorkerProcess
from tests.worker_jobs import JOB_TIMEOUT_S, signal_when, wait_while_progressing

pytestmark = pytest.mark.service

# Each stage is stretched only as far as the SIGTERM needs: the test sends it within a poll
# (0.1 s) of the first unit stored (a module, an epoch, an α), and the stage must still have units
# left then, so the tests read and signal with the worker stopped (``signal_when``): the MRC
# stage's modules are few and the last is short, and a poll and its queries under load outlasted
# them.
# Every job runs that stage about twice over (the resumed job, then the same spec
# straight through), so its size is most of each test's time under load: 2.5 times smaller than
# before (400 steps, 150 epochs, 41 α points of 128 examples) still leaves about a second after
# the first unit on a quiet 2-core machine (the 3 modules after the first: 0.9 s; 58 epochs:
# 1.2 s), several at a load of 10.
MRC_STEPS = 160
# A shard of the digits model's 4 modules holds 2: the SIGTERM waits for a shard midway with a
# module other than the cheapest (the last) left, and that module is all the margin there.
SHARDED_MRC_STEPS = 400
EPOCHS = 60
ALPHA_STEP = 0.05  # 21 points
EVALUATED = 96  # examples attacked per α, each with ATTACK_STEPS steps
ATTACK_STEPS = 10


def mrc_table(sessions: sessionmaker[Session], job_id: str) -> list[dict[str, Any]]:
    """The job's MRC rows without their measured times."""
    with sessions() as session:
        return [{column: getattr(row, column) for column in (
            "position", "module", "parameters", "mrc", "worst_robust_loss",
            "robust_accuracy_at_worst", "robust_accuracy_drop", "max_ascent_loss", "passes",
            "exact")} for row in jobs.get_mrc_rows(session, job_id)]


def scored(log: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [payload["name"] for kind, payload in log if kind == "module_scored"]


def test_an_mrc_stage_handed_back_midway_scores_only_the_missing_modules_on_another_worker(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], store: ObjectStore, quick_config: dict[str, Any],
        tmp_path: Path) -> None:
    spec = copy.deepcopy(quick_config)
    spec["mrc"].update(steps=MRC_STEPS, reshuffle=True)  # reshuffle: seeded batch orders too
    first = start_worker(WORKER_LEASE_SECONDS=LEASE_S)
    job_id = submit(spec)
    signal_when(first, sessions, job_id, lambda job: job.stage == "mrc" and bool(
        scored(events(sessions, job_id))), "a scored module")
    exit_after(first, time.monotonic())
    assert first.process.returncode == 0, first.log()[-3000:]
    mrc = stages_of(sessions, job_id)["mrc"]
    assert (mrc.status, mrc.attempts) == ("pending", 0), first.log()[-3000:]
    before = events(sessions, job_id)
    stored = scored(before)

    second = start_worker(WORKER_LEASE_SECONDS=LEASE_S)
    job = wait_while_progressing(
        sessions, job_id, lambda j: j.is_finished, "the end", JOB_TIMEOUT_S, workers=(second,))
    assert job.status == "succeeded", job.error_message
    log = events(sessions, job_id)
    handed = len(before)  # what the second worker reported follows
    table = [row["module"] for row in mrc_table(sessions, job_id)]
    assert 1 <= len(stored) < len(table), (stored, table)  # stopped mid-stage
    # The second attempt scored the modules the first had not stored, and only those.
    assert sorted(scored(log[handed:])) == sorted(name for name in table if name not in stored)
    resumed = [payload for kind, payload in log[handed:] if kind == "mrc_resumed"]
    assert [(p["modules"], p["scored"]) for p in resumed] == [
        (stored, len(table) - len(stored))]

    # The same job run without interruption gives the same table, choice and weights.
    other_id = submit(spec)
    other = wait_while_progressing(
        sessions, other_id, lambda j: j.is_finished, "the end", JOB_TIMEOUT_S, workers=(second,))
    assert other.status == "succeeded", other.error_message
    assert sorted(scored(events(sessions, other_id))) == sorted(table)  # nothing of the first
    assert mrc_table(sessions, job_id) == mrc_table(sessions, other_id)
    assert_same_results(sessions, store, job, other, (job_id, other_id), tmp_path)


def evaluated(log: list[tuple[str, dict[str, Any]]]) -> list[float]:
    return [payload["alpha"] for kind, payload in log if kind == "alpha_evaluated"]


def test_an_interpolation_handed_back_midway_attacks_only_the_missing_alphas_on_another_worker(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], store: ObjectStore, quick_config: dict[str, Any],
        tmp_path: Path) -> None:
    spec = copy.deepcopy(quick_config)
    # Only a full curve is resumed ("selection" stops points on what ran before them).
    spec["interpolation"].update(alpha_step=ALPHA_STEP, curve="full")
    spec["evaluation"].update(max_examples=EVALUATED)
    spec["attack"].update(steps=ATTACK_STEPS)
    first = start_worker(WORKER_LEASE_SECONDS=LEASE_S)
    job_id = submit(spec)
    signal_when(first, sessions, job_id, lambda job: job.stage == "interpolate" and len(
        evaluated(events(sessions, job_id))) >= 2, "an α > 0 attacked", timeout=60)
    exit_after(first, time.monotonic())
    assert first.process.returncode == 0, first.log()[-3000:]
    interpolate = stages_of(sessions, job_id)["interpolate"]
    assert (interpolate.status, interpolate.attempts) == ("pending", 0), first.log()[-3000:]
    stored = evaluated(events(sessions, job_id))
    grid = alpha_grid(ALPHA_STEP)
    assert 2 <= len(stored) < len(grid) and stored == grid[:len(stored)]  # stopped mid-curve

    second = start_worker(WORKER_LEASE_SECONDS=LEASE_S)
    job = wait_while_progressing(
        sessions, job_id, lambda j: j.is_finished, "the end", JOB_TIMEOUT_S, workers=(second,))
    assert job.status == "succeeded", job.error_message
    log = events(sessions, job_id)
    handed = next(i for i, (kind, _) in enumerate(log) if kind == "stage_handed_back")
    # α = 0 again (its outcomes order the others' attacks), then only the points not stored.
    assert evaluated(log[handed:]) == [0.0, *grid[len(stored):]]
    assert [p["alphas"] for kind, p in log[handed:] if kind == "interpolation_resumed"] == [
        stored[1:]]

    other_id = submit(spec)
    other = wait_while_progressing(
        sessions, other_id, lambda j: j.is_finished, "the end", JOB_TIMEOUT_S, workers=(second,))
    assert other.status == "succeeded", other.error_message
    with sessions() as session:
        curves = [[(p.alpha, p.clean_accuracy, p.robust_accuracy)
                   for p in jobs.get_interpolation_points(session, some)]
                  for some in (job_id, other_id)]
    assert curves[0] == curves[1] and len(curves[0]) == len(grid)
    assert_same_results(sessions, store, job, other, (job_id, other_id), tmp_path)


#: The digits model's last module. Its ascent runs through nothing after it, the fastest of the
#: four: left alone in its shard, the SIGTERM (a poll and two queries after the first module's row
#: under a load of 10) came after the shard had ended, and nothing was stopped midway.
LAST_MODULE = "fc"


def running_shard_midway(sessions: sessionmaker[Session], job_id: str
                         ) -> Callable[[Job], bool]:
    """True once a shard still running has some, not all, of its modules' rows stored, and a
    module other than the last one still to score (the margin the SIGTERM needs)."""
    def midway(job: Job) -> bool:
        if job.stage != "mrc":
            return False
        stored = set(scored(events(sessions, job_id)))
        with sessions() as session:
            return any(shard.status == "running" and stored & set(shard.modules)
                       and set(shard.modules) - stored - {LAST_MODULE}
                       for shard in list_shards(session, job_id))
    return midway


def test_a_sharded_mrc_shard_handed_back_midway_scores_only_its_missing_modules_on_another_worker(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], store: ObjectStore, quick_config: dict[str, Any],
        tmp_path: Path) -> None:
    spec = copy.deepcopy(quick_config)
    spec["mrc"].update(steps=SHARDED_MRC_STEPS, reshuffle=True, shards=2)
    first = start_worker(WORKER_LEASE_SECONDS=LEASE_S)
    job_id = submit(spec)
    signal_when(first, sessions, job_id, running_shard_midway(sessions, job_id),
                "a running shard with a scored module")
    exit_after(first, time.monotonic())
    assert first.process.returncode == 0, first.log()[-3000:]
    before = events(sessions, job_id)
    stored = scored(before)
    with sessions() as session:
        shards = {shard.shard: (shard.status, shard.attempts, list(shard.modules))
                  for shard in list_shards(session, job_id)}
    # The shard stopped midway went back to pending with its attempt given back, its rows kept
    # (the first shard's whole table too, when the SIGTERM came during the second one).
    stopped = [index for index, (_, _, modules) in shards.items()
               if 1 <= len(set(stored) & set(modules)) < len(modules)]
    assert len(stopped) == 1 and shards[stopped[0]][:2] == ("pending", 0), (
        shards, stored, first.log()[-3000:])
    modules = shards[stopped[0]][2]
    kept = [name for name in stored if name in modules]

    second = start_worker(WORKER_LEASE_SECONDS=LEASE_S)
    job = wait_while_progressing(
        sessions, job_id, lambda j: j.is_finished, "the end", JOB_TIMEOUT_S, workers=(second,))
    assert job.status == "succeeded", job.error_message
    log = events(sessions, job_id)[len(before):]
    table = [row["module"] for row in mrc_table(sessions, job_id)]
    # Every module was scored once over both workers; the stopped shard's second attempt
    # scored only its modules the first attempt had not stored and said which it took.
    assert sorted(stored + scored(log)) == sorted(table)
    assert sorted(name for name in scored(log) if name in modules) == sorted(
        name for name in modules if name not in kept)
    resumed = [(p["modules"], p["scored"]) for kind, p in log if kind == "mrc_resumed"]
    assert (kept, len(modules) - len(kept)) in resumed, resumed

    # The same sharded job run without interruption gives the same table, choice and weights.
    other_id = submit(spec)
    other = wait_while_progressing(
        sessions, other_id, lambda j: j.is_finished, "the end", JOB_TIMEOUT_S, workers=(second,))
    assert other.status == "succeeded", other.error_message
    assert sorted(scored(events(sessions, other_id))) == sorted(table)  # nothing of the first
    assert mrc_table(sessions, job_id) == mrc_table(sessions, other_id)
    assert_same_results(sessions, store, job, other, (job_id, other_id), tmp_path)


def epochs_reported(log: list[tuple[str, dict[str, Any]]]) -> list[int]:
    return [payload["epoch"] for kind, payload in log if kind == "epoch"]


def test_a_fine_tune_handed_back_midway_continues_from_its_last_epoch_on_another_worker(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], store: ObjectStore, quick_config: dict[str, Any],
        tmp_path: Path) -> None:
    spec = copy.deepcopy(quick_config)
    # A milestone after the stop: the resumed schedule must still decay there.
    spec["finetune"].update(epochs=EPOCHS, lr_milestones=[EPOCHS - 10], momentum=0.9)
    first = start_worker(WORKER_LEASE_SECONDS=LEASE_S)
    job_id = submit(spec)
    signal_when(first, sessions, job_id, lambda job: job.stage == "finetune" and len(
        epochs_reported(events(sessions, job_id))) >= 2, "two epochs")
    exit_after(first, time.monotonic())
    assert first.process.returncode == 0, first.log()[-3000:]
    finetune = stages_of(sessions, job_id)["finetune"]
    assert (finetune.status, finetune.attempts) == ("pending", 0), first.log()[-3000:]
    before = events(sessions, job_id)
    done = epochs_reported(before)
    assert 2 <= len(done) < EPOCHS and done == list(range(1, len(done) + 1))  # stopped midway
    # The state of the last epoch reported, under the job's prefix.
    state = decode_epoch_state(store.get_bytes(epoch_state_key(job_id)))
    assert state is not None and state.epoch == len(done)

    second = start_worker(WORKER_LEASE_SECONDS=LEASE_S)
    job = wait_while_progressing(
        sessions, job_id, lambda j: j.is_finished, "the end", JOB_TIMEOUT_S, workers=(second,))
    assert job.status == "succeeded", job.error_message
    log = events(sessions, job_id)
    handed = len(before)  # what the second worker reported follows
    # The second attempt trained only the epochs after the stored one.
    assert epochs_reported(log[handed:]) == list(range(len(done) + 1, EPOCHS + 1))
    assert [(p["epochs"], p["trained"], p["inputs"]) for kind, p in log[handed:]
            if kind == "finetune_resumed"] == [(len(done), EPOCHS - len(done), state.inputs)]
    assert not store.exists(epoch_state_key(job_id))  # deleted once the stage was recorded

    # The same job run without interruption: the same epochs, choice and weights.
    other_id = submit(spec)
    other = wait_while_progressing(
        sessions, other_id, lambda j: j.is_finished, "the end", JOB_TIMEOUT_S, workers=(second,))
    assert other.status == "succeeded", other.error_message
    assert "finetune_resumed" not in {kind for kind, _ in events(sessions, other_id)}
    with sessions() as session:
        metrics = [[(e.epoch, e.lr, e.train_loss, e.train_accuracy, e.val_accuracy)
                    for e in jobs.get_epoch_metrics(session, some)] for some in (job_id, other_id)]
    assert metrics[0] == metrics[1] and len(metrics[0]) == EPOCHS
    assert_same_results(sessions, store, job, other, (job_id, other_id), tmp_path)
    assert list(store.list_objects(epoch_states_prefix(other_id))) == []


def test_a_sweep_candidate_handed_back_midway_continues_from_its_last_epoch(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], store: ObjectStore, quick_config: dict[str, Any],
        tmp_path: Path) -> None:
    spec = copy.deepcopy(quick_config)
    spec["finetune"].update(epochs=EPOCHS, lr_milestones=[EPOCHS - 10], candidates=2)
    first = start_worker(WORKER_LEASE_SECONDS=LEASE_S)
    job_id = submit(spec)
    signal_when(first, sessions, job_id,
                lambda job: len(epochs_reported(events(sessions, job_id))) >= 2,
                "two epochs of the first candidate")
    exit_after(first, time.monotonic())
    assert first.process.returncode == 0, first.log()[-3000:]
    done = epochs_reported(events(sessions, job_id))
    assert 2 <= len(done) < EPOCHS  # candidate 0 stopped midway; candidate 1 never started
    state = decode_epoch_state(store.get_bytes(epoch_state_key(job_id, 0)))
    assert state is not None and state.epoch == len(done)

    second = start_worker(WORKER_LEASE_SECONDS=LEASE_S)
    job = wait_while_progressing(
        sessions, job_id, lambda j: j.is_finished, "the end", JOB_TIMEOUT_S, workers=(second,))
    assert job.status == "succeeded", job.error_message
    log = events(sessions, job_id)
    assert [(p["epochs"], p["inputs"]) for kind, p in log if kind == "finetune_resumed"] == [
        (len(done), state.inputs)]  # candidate 0 continued; candidate 1 started afresh
    assert len(epochs_reported(log)) == 2 * EPOCHS  # no epoch trained twice
    assert list(store.list_objects(epoch_states_prefix(job_id))) == []

    other_id = submit(spec)
    other = wait_while_progressing(
        sessions, other_id, lambda j: j.is_finished, "the end", JOB_TIMEOUT_S, workers=(second,))
    assert other.status == "succeeded", other.error_message
    assert_same_results(sessions, store, job, other, (job_id, other_id), tmp_path)
