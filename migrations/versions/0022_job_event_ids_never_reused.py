"""SQLite: ``job_events.id`` never given twice (``AUTOINCREMENT``), as Postgres's sequence never
gives a number twice. Without it SQLite gives a new row the largest id in the table plus one: once
a job holding the newest events was deleted, the next events of other jobs got the deleted
events' ids again, so a client that keys events by id took them for ones it had seen, and the
API's poll for new events (``EVENT_NOTIFY=poll``, the embedded default), which looks for ids above
the highest it has seen, missed them until an id passed that mark. Postgres: nothing to change.

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-27 02:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rebuild(autoincrement: bool) -> None:
    # SQLite takes AUTOINCREMENT only in CREATE TABLE: the table is copied into a new one (its
    # rows keep their ids, and the new table's counter starts after the largest). Nothing
    # references job_events, so dropping the old table deletes nothing else.
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("job_events", recreate="always",
                              table_kwargs={"sqlite_autoincrement": autoincrement}):
        pass


def upgrade() -> None:
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)
