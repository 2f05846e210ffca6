"""A job's MRC table as a reader sees it: the recorded table once the MRC stage is done, and
before that the rows scored so far, so that a long stage (hundreds of modules) does not show an
empty table for many minutes.

The stage records its table (``mrc_rows``) only when it ends, but writes each module's row as a
``module_scored`` event as soon as it is scored (at most ``PROGRESS_INTERVAL_SECONDS`` later,
by each shard of a sharded stage too). Those events are read here as the stage's own resume
reads them (:func:`persistence.stages.stored_events`: the rows computed from the same inputs
digest, the last written of a module winning), under the digests of the stage's current
attempt: rows of an earlier attempt on other inputs (another device type, another adversarial
set) are not the table's and are left out, rows it would take over are kept. They are ordered
as the table will be (by the event's ``order``: the module's place among the modules the job's
MRC settings select, which the merge of a sharded table sorts by too).

A job that failed or was cancelled during its MRC stage keeps showing the rows it scored
(evidence of where it got to), still marked partial.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from sqlalchemy import select
from sqlalchemy.orm import Session

from persistence.jobs import get_mrc_rows
from persistence.models import JobEvent, JobStage, MRCRow, MRCShard, StageName, StageStatus
from persistence.stages import stored_events
from persistence.transactions import EventKind

MODULE_SCORED = "module_scored"


@dataclass(frozen=True)
class TableRow:
    """One module's row, recorded (``mrc_rows``) or scored so far (a ``module_scored`` event).
    ``position``: its place in table order; for a row scored so far, its place among the
    modules the job selects, which is the table's unless a selected module turns out not to
    affect the output and is left out of the table (the recorded table numbers rows 0..n-1)."""

    position: int
    module: str
    parameters: int
    mrc: float
    worst_robust_loss: float
    robust_accuracy_at_worst: float | None
    robust_accuracy_drop: float | None
    seconds: float | None
    max_ascent_loss: float | None
    passes: int | None
    exact: bool | None
    zero_gradient: bool | None = None  # None: recorded before the flag was (unknown)

    @classmethod
    def recorded(cls, row: MRCRow) -> TableRow:
        return cls(position=row.position, module=row.module, parameters=row.parameters,
                   mrc=row.mrc, worst_robust_loss=row.worst_robust_loss,
                   robust_accuracy_at_worst=row.robust_accuracy_at_worst,
                   robust_accuracy_drop=row.robust_accuracy_drop, seconds=row.seconds,
                   max_ascent_loss=row.max_ascent_loss, passes=row.passes, exact=row.exact,
                   zero_gradient=row.zero_gradient)


@dataclass(frozen=True)
class MRCTable:
    """The table, and whether it is the recorded one (``complete``) or the rows scored so far.
    ``modules_total``: the rows the table will have, when known (the stage's own count, or its
    shards' modules); None before the stage has reported any."""

    rows: list[TableRow]
    complete: bool
    modules_total: int | None


def read_mrc_table(session: Session, job_id: str) -> MRCTable:
    """The job's MRC table: the recorded one once the MRC stage is done (as it always was), else
    the rows scored so far (see the module docstring). Reads only."""
    recorded = [TableRow.recorded(row) for row in get_mrc_rows(session, job_id)]
    stage = None if recorded else session.execute(select(JobStage.status).where(
        JobStage.job_id == job_id, JobStage.stage == StageName.MRC)).scalar_one_or_none()
    if recorded or stage in (None, StageStatus.DONE):
        return MRCTable(recorded, complete=True, modules_total=len(recorded))
    payloads = _scored_so_far(session, job_id)
    rows = _in_table_order(payloads)
    shards = session.execute(select(MRCShard.modules).where(MRCShard.job_id == job_id)).scalars()
    sharded = sum(len(modules) for modules in shards)
    total = sharded or next((p["modules_total"] for p in reversed(payloads)
                             if _is_int(p.get("modules_total"))), None)
    return MRCTable(rows, complete=False, modules_total=total)


def _scored_so_far(session: Session, job_id: str) -> list[dict[str, Any]]:
    """The current attempt's rows, one per module (the last written wins), first scored first."""
    rows: dict[str, dict[str, Any]] = {}
    for digest in _current_digests(session, job_id):
        for payload in stored_events(session, job_id, MODULE_SCORED, digest):
            name = payload.get("name")
            if isinstance(name, str):
                rows[name] = payload
    return list(rows.values())


def _current_digests(session: Session, job_id: str) -> list[str]:
    """The inputs digests of the MRC stage's current attempt: those of the rows written since
    its latest start (its shards may run on several platforms, each a digest of its own), or,
    before it has written one (a resumed attempt still remaking its adversarial set), that of
    the latest row written, which it takes over when its inputs come out equal."""
    started = session.execute(
        select(JobEvent.id, JobEvent.payload)
        .where(JobEvent.job_id == job_id, JobEvent.kind == EventKind.STAGE_STARTED)
        .order_by(JobEvent.id.desc())).all()
    since = next((event_id for event_id, payload in started
                  if isinstance(payload, Mapping) and payload.get("stage") == StageName.MRC), 0)
    scored = select(JobEvent.payload).where(JobEvent.job_id == job_id,
                                            JobEvent.kind == MODULE_SCORED)
    found = list(session.execute(scored.where(JobEvent.id > since)).scalars()) or list(
        session.execute(scored.order_by(JobEvent.id.desc()).limit(1)).scalars())
    digests = (payload.get("inputs") for payload in found if isinstance(payload, Mapping))
    return list(dict.fromkeys(digest for digest in digests if isinstance(digest, str)))


def _in_table_order(payloads: list[dict[str, Any]]) -> list[TableRow]:
    """The rows in table order; those written before events carried ``order`` after them, as
    scored, numbered by their place in the list."""
    ordered = sorted(enumerate(payloads), key=lambda item: (
        (0, item[1]["order"]) if _is_int(item[1].get("order")) else (1, item[0])))
    rows = []
    for place, (_, payload) in enumerate(ordered):
        order = payload.get("order")
        row = _row(payload, order if _is_int(order) else place)
        if row is not None:
            rows.append(row)
    return rows


def _row(payload: Mapping[str, Any], position: int) -> TableRow | None:
    """The row of a ``module_scored`` payload (``ModuleCriticality.as_dict`` and the event's
    own keys); None if a value the table needs is missing (such a row is scored again, as the
    stage's resume would)."""
    name, parameters = payload.get("name"), payload.get("parameters")
    mrc, worst = _number(payload.get("mrc")), _number(payload.get("worst_robust_loss"))
    if not isinstance(name, str) or not _is_int(parameters) or mrc is None or worst is None:
        return None
    passes, exact = payload.get("passes"), payload.get("exact")
    flagged = payload.get("zero_gradient")
    return TableRow(position=position, module=name,
                    parameters=int(parameters), mrc=mrc, worst_robust_loss=worst,
                    robust_accuracy_at_worst=_number(payload.get("robust_accuracy_at_worst")),
                    robust_accuracy_drop=_number(payload.get("robust_accuracy_drop")),
                    seconds=_number(payload.get("seconds")),
                    max_ascent_loss=_number(payload.get("max_ascent_loss")),
                    passes=int(passes) if _is_int(passes) else None,
                    exact=exact if isinstance(exact, bool) else None,
                    zero_gradient=flagged if isinstance(flagged, bool) else None)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
