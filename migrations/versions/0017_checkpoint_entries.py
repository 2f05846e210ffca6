"""``checkpoints.entries``: the key paths of the weights entries an uploaded PyTorch checkpoint
holds (``["state_dict", "state_dict_ema"]`` for a model and its EMA; empty when its weights are
at its top level), found by the upload's check, so that the caller can see which to name in a
job's ``config.checkpoint_entry``. NULL on rows recorded before (unknown: the job's check still
reads the file).

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-26 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("checkpoints", sa.Column(
        "entries", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite (3.35+) drops a plain column in place. A batch "move and copy" would drop the
        # checkpoints table, which the jobs' foreign keys refuse (or, with ON DELETE CASCADE, obey
        # by deleting their rows).
        op.execute("ALTER TABLE checkpoints DROP COLUMN entries")
        return
    op.drop_column("checkpoints", "entries")
