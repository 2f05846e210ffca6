"""A job's warnings read from its event log (persistence.job_warnings) on SQLite and Postgres:
event order, repeats counted once, other kinds and other jobs left out, the bound per job."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs
from persistence.job_warnings import NO_WARNINGS, job_warnings, warnings_of
from tests.persistence.helpers import T0


def test_warnings_in_event_order_with_repeats_counted(sessions: sessionmaker[Session],
                                                      new_job: Callable[..., str]) -> None:
    job, other, quiet = new_job(), new_job(), new_job()
    written = [
        (job, "warning", {"stage": "preflight", "message": "few examples"}),
        (job, "epoch", {"epoch": 1, "message": "not a warning"}),
        (other, "warning", {"stage": "mrc", "message": "the other job's"}),
        (job, "warning", {"stage": "mrc", "message": "not scored: fc"}),
        (job, "warning", {"stage": "preflight", "message": "few examples"}),  # a retry's repeat
        (job, "warning", {"stage": "mrc", "message": "few examples"}),  # same text, other stage
        (job, "warning", {"stage": "finetune", "candidate": 2, "message": "diverged"}),
        (job, "warning", {"stage": "finetune", "candidate": 3, "message": "diverged"}),
        (job, "warning", {"message": "no stage"}),
    ]
    with sessions() as session:
        for i, (job_id, kind, payload) in enumerate(written):
            jobs.append_event(session, job_id, kind, payload, now=T0 + timedelta(seconds=i))
        found = job_warnings(session, [job, other, quiet])
    assert found[quiet] == NO_WARNINGS
    assert [(w.stage, w.message) for w in found[other].items] == [("mrc", "the other job's")]
    mine = found[job]
    assert [(w.stage, w.candidate, w.message, w.count) for w in mine.items] == [
        ("preflight", None, "few examples", 2),
        ("mrc", None, "not scored: fc", 1),
        ("mrc", None, "few examples", 1),
        ("finetune", 2, "diverged", 1),
        ("finetune", 3, "diverged", 1),
        (None, None, "no stage", 1),
    ]
    assert mine.items[0].at == T0  # the first time it was written
    assert mine.items[1].at == T0 + timedelta(seconds=3)
    assert mine.total == 6 and not mine.truncated


def test_the_list_is_bounded_and_says_how_many_there_are(sessions: sessionmaker[Session],
                                                         new_job: Callable[..., str]) -> None:
    job = new_job()
    with sessions() as session:
        for i in range(7):
            jobs.append_event(session, job, "warning", {"stage": "mrc", "message": f"w{i}"},
                              now=T0 + timedelta(seconds=i))
        found = warnings_of(session, job, limit=3)
    assert [w.message for w in found.items] == ["w0", "w1", "w2"]
    assert found.total == 7 and found.truncated


def test_a_payload_of_another_shape_is_read_not_refused(sessions: sessionmaker[Session],
                                                        new_job: Callable[..., str]) -> None:
    """An odd payload (a candidate that is not an index, no message) is one more warning, not
    a failed read of the job (a cast in SQL would raise on Postgres)."""
    job = new_job()
    with sessions() as session:
        jobs.append_event(session, job, "warning", {"stage": "mrc", "candidate": "x"},
                          now=T0)
        jobs.append_event(session, job, "warning", {"stage": "mrc", "candidate": 1.5,
                                                    "message": "m"}, now=T0)
        found = warnings_of(session, job)
    assert [(w.candidate, w.message) for w in found.items] == [(None, ""), (None, "m")]
