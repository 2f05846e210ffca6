"""Nothing left behind: a row waiting for a worker whose message was lost is sent again.

Every piece of worker work is a row that a message drives: a job's stage, an MRC shard, a sweep
candidate, a materialization, a webhook message. The message goes out after the commit that makes
the row wait, so it can be lost before any worker takes it: a broker restarted without
persistence (Redis without AOF), a process killed between the commit and the send, a send that
failed. A lease (:mod:`persistence.leases`) covers only work a worker has claimed; a row still
waiting has no lease to expire, and nothing else would ever send its message again.

The rule, one for all of them: a waiting row records when its message was last sent, and the
workers' recovery loop sends again any row still waiting ``QUEUED_RESEND_AFTER_SECONDS`` after
that, moving the time forward in the same conditional UPDATE (:func:`take_overdue`), so that of
the loops of every worker one re-sends it, once per period. The period is long (an hour): a row
may simply wait behind a long queue, and each copy costs a worker a claim that finds nothing.
Sending twice is harmless because every claim is one conditional UPDATE: the copy that comes
second finds the row claimed, running or done, and does nothing.

Where each kind keeps "last sent":

- a job's current stage, MRC shards, sweep candidates, materializations: ``dispatched_at``
  (migration 0020), set wherever the row is made to wait with a message on its way (a job
  created, a stage finished and the next one sent, work requested, queued again, handed out or
  released for a retry) and by each re-send; rows from before count from ``created_at`` (a
  stage, which has none: from its job's ``updated_at``, the rule stages had before);
- webhook messages: ``next_attempt_at`` (:func:`persistence.webhooks.deliveries_to_redispatch`,
  a lease length late rather than this period: a message is cheap and meant to be prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select, update
from sqlalchemy.orm import Session

from persistence.leases import rows_affected
from persistence.models import Job, JobStage, Materialization, MRCShard, SweepCandidate

#: The tables whose rows carry ``dispatched_at``.
DispatchedModel = type[JobStage] | type[MRCShard] | type[SweepCandidate] | type[Materialization]


def last_sent(model: DispatchedModel) -> ColumnElement[datetime]:
    """When the row's message was last sent: ``dispatched_at``, else (a row from before
    migration 0020) its ``created_at``; a stage, which has none, its job's ``updated_at``."""
    if issubclass(model, JobStage):
        job_changed = (select(Job.updated_at).where(Job.id == JobStage.job_id)
                       .correlate_except(Job).scalar_subquery())
        return func.coalesce(JobStage.dispatched_at, job_changed)
    return func.coalesce(model.dispatched_at, model.created_at)


def overdue(model: DispatchedModel, *, waiting: str, after: float, now: datetime) -> Any:
    """WHERE clause: the row still waits (status ``waiting``) ``after`` seconds past the last
    send of its message."""
    return and_(model.status == waiting, last_sent(model) < now - timedelta(seconds=after))


def take_overdue(session: Session, model: DispatchedModel, where: Sequence[Any], *,
                 waiting: str, after: float, now: datetime) -> bool:
    """Mark the row ``where`` selects as sent now if it is still :func:`overdue` (in the caller's
    transaction); True: the caller sends its message again after the commit.

    One conditional UPDATE: two recovery passes at the same moment cannot both take it (on
    Postgres the second re-checks the WHERE clause once the first commits), and a row claimed
    meanwhile is no longer waiting."""
    taken = rows_affected(session, update(model)
                          .where(*where, overdue(model, waiting=waiting, after=after, now=now))
                          .values(dispatched_at=now)
                          .execution_options(synchronize_session=False))
    return taken == 1
