"""Real workers whose clocks disagree share leases by the database's clock
(``persistence/db_clock.py``).

Two real worker processes on Postgres, one with its clock two minutes off
(``tests/clock_skew.py``), both running their recovery loop every half second. Before, each wrote
and judged leases by its own clock: a holder two minutes behind wrote leases already expired for
the other, whose recovery pass sent the stage again and whose claim took it over; a worker two
minutes ahead read the holder's live lease as expired and took the stage itself. Either way the
stage changed hands (a new owner, one more attempt, a ``stage_recovered`` event) while its
worker was alive and well.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence.models import JobStage
from tests.clock_skew import SKEW_ENV
from tests.reliability.conftest import event_kinds
from tests.service_fixtures import WorkerProcess
from tests.worker_jobs import wait_for

pytestmark = pytest.mark.service

LEASE_S = 3.0  # the heartbeat renews every LEASE_S / 3
SKEW_S = 120.0  # far more than a lease
PASS_S = 0.5  # every worker's recovery loop runs this often
WATCH_S = 2 * LEASE_S  # the other worker's passes watched: a taken stage changes hands in one


def stage_hands(sessions: sessionmaker[Session], job_id: str) -> tuple[str | None, int]:
    with sessions() as session:
        row = session.get_one(JobStage, (job_id, "finetune"))
        return row.lease_owner, row.attempts


@pytest.mark.parametrize(("holder_skew", "other_skew"), [(-SKEW_S, 0.0), (0.0, SKEW_S)],
                         ids=["holder-behind", "other-ahead"])
def test_a_worker_with_a_skewed_clock_neither_loses_its_stage_nor_takes_another_s(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], quick_config: dict[str, Any],
        holder_skew: float, other_skew: float) -> None:
    def start(skew: float) -> WorkerProcess:
        settings = {"WORKER_LEASE_SECONDS": str(LEASE_S),
                    "WORKER_RECOVERY_INTERVAL_SECONDS": str(PASS_S)}
        if not skew:
            return start_worker(**settings)
        return start_worker(module="tests.clock_skew", **{SKEW_ENV: str(skew)}, **settings)

    holder = start(holder_skew)
    spec = copy.deepcopy(quick_config)
    spec["finetune"].update(epochs=1000, lr_milestones=[900])  # many minutes
    job_id = submit(spec)
    wait_for(sessions, job_id,
             lambda j: j.stage == "finetune" and "epoch" in event_kinds(sessions, job_id),
             "fine-tuning", workers=(holder,))
    held = stage_hands(sessions, job_id)
    recovered = event_kinds(sessions, job_id).count("stage_recovered")

    other = start(other_skew)  # idle: it takes whatever message a recovery pass sends
    deadline = time.monotonic() + WATCH_S
    while time.monotonic() < deadline:
        assert stage_hands(sessions, job_id) == held, (
            f"the stage changed hands:\n--- holder\n{holder.log()[-3000:]}\n"
            f"--- other\n{other.log()[-3000:]}")
        time.sleep(0.1)
    assert event_kinds(sessions, job_id).count("stage_recovered") == recovered
    assert "lost the lease" not in holder.log()
    epochs = event_kinds(sessions, job_id).count("epoch")
    wait_for(sessions, job_id, lambda j: event_kinds(sessions, job_id).count("epoch") > epochs,
             "another epoch of its holder", workers=(holder, other))
    assert stage_hands(sessions, job_id) == held
    assert holder.process.poll() is None and other.process.poll() is None
