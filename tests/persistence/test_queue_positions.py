"""A list page's queue positions, numbered in one pass over the queue (a window over the queued
jobs), are the positions the per-job rule gives (one plus the queued jobs ahead in
``(created_at, id)`` order), ties in ``created_at`` included, on SQLite and Postgres; and a page
costs the same number of statements however many of its jobs are queued."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import event, update
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs
from persistence.models import Job, JobStatus
from tests.persistence.helpers import T0


def _seed(sessions: sessionmaker[Session], new_job: Callable[..., str], count: int) -> list[str]:
    """``count`` jobs, three to a ``created_at`` (ties broken by id), every third not queued."""
    ids = [new_job(now=T0 + timedelta(seconds=i // 3)) for i in range(count)]
    with sessions() as session:
        session.execute(update(Job).where(Job.id.in_(ids[1::3])).values(status=JobStatus.RUNNING))
        session.commit()
    return ids


def test_page_positions_are_the_per_job_positions(sessions: sessionmaker[Session],
                                                  new_job: Callable[..., str]) -> None:
    _seed(sessions, new_job, 15)
    with sessions() as session:
        listed, cursor = {}, None
        while True:  # small pages, so that positions cross page boundaries
            page = jobs.list_jobs(session, limit=4, cursor=cursor)
            listed.update({job.id: job.queue_position for job in page.jobs})
            if (cursor := page.next_cursor) is None:
                break
        queued_only = jobs.list_jobs(session, status=["queued", "failed"], limit=100)
        expected = {job_id: jobs.queue_position(session, session.get(Job, job_id))
                    for job_id in listed}
    assert listed == expected
    assert sorted(p for p in expected.values() if p is not None) == list(range(1, 11))
    assert {job.id: job.queue_position for job in queued_only.jobs} == {
        job_id: p for job_id, p in expected.items() if p is not None}
    # A page that can hold no queued job still answers None (no queue is numbered for it).
    with sessions() as session:
        running = jobs.list_jobs(session, status="running", limit=100).jobs
    assert len(running) == 5 and all(job.queue_position is None for job in running)


def test_a_page_costs_the_same_statements_whatever_its_queued_jobs(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    def statements(limit: int) -> int:
        with sessions() as session:
            engine = session.get_bind()
            seen: list[str] = []

            def record(*args: object) -> None:
                seen.append(str(args[2]))

            event.listen(engine, "before_cursor_execute", record)
            try:
                page = jobs.list_jobs(session, status="queued", limit=limit)
            finally:
                event.remove(engine, "before_cursor_execute", record)
        assert len(page.jobs) == limit
        return len(seen)

    _seed(sessions, new_job, 30)
    assert statements(1) == statements(20)
