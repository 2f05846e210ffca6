"""Module names without a length bound: ``jobs.selected_module``, ``mrc_rows.module`` and
``sweep_candidates.module`` were VARCHAR(255), so on PostgreSQL a model nested deeply enough
(a name past 255 characters) failed its job's MRC stage when the table was recorded. SQLite does
not enforce the length and is left as it is (see ``persistence.models.MODULE_NAME``).

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-26 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (("jobs", "selected_module", True), ("mrc_rows", "module", False),
            ("sweep_candidates", "module", False))


def _is_sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    if _is_sqlite():
        return
    for table, column, nullable in _COLUMNS:
        with op.batch_alter_table(table) as batch:  # an ALTER on PostgreSQL
            batch.alter_column(column, type_=sa.Text(), existing_type=sa.String(255),
                               existing_nullable=nullable)


def downgrade() -> None:
    if _is_sqlite():
        return
    # A name past 255 characters recorded meanwhile is cut to fit, as the old column requires.
    for table, column, nullable in _COLUMNS:
        op.execute(sa.text(f"UPDATE {table} SET {column} = substr({column}, 1, 255) "
                           f"WHERE length({column}) > 255"))
        with op.batch_alter_table(table) as batch:  # an ALTER on PostgreSQL
            batch.alter_column(column, type_=sa.String(255), existing_type=sa.Text(),
                               existing_nullable=nullable)
