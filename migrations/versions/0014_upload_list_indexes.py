"""Indexes for listing a project's checkpoints and datasets newest first
(``GET /v1/checkpoints``, ``GET /v1/datasets``): each page then walks the index from the cursor
instead of sorting every row of the project, as jobs already do.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-26 09:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = ["project_id", "created_at", "id"]


def upgrade() -> None:
    op.create_index("ix_checkpoints_project_id_created_at_id", "checkpoints", _COLUMNS)
    op.create_index("ix_datasets_project_id_created_at_id", "datasets", _COLUMNS)


def downgrade() -> None:
    op.drop_index("ix_datasets_project_id_created_at_id", table_name="datasets")
    op.drop_index("ix_checkpoints_project_id_created_at_id", table_name="checkpoints")
