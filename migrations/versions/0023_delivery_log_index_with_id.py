"""The delivery log's index gets the row id, as the other lists' have.

``GET /v1/webhooks/{id}/deliveries`` pages by ``(created_at, id)`` after a cursor
(:mod:`persistence.pages`). Its index was ``(endpoint_id, created_at)``: Postgres could bound
it by ``created_at <=`` only, read the cursor's own instant again, dropped those rows by filter
and sorted ties by ``id`` after the index read. With ``(endpoint_id, created_at, id)`` the
row-value comparison bounds the index exactly and the page comes out in index order.

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-27 05:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "webhook_deliveries"
OLD = ("ix_webhook_deliveries_endpoint_id_created_at", ["endpoint_id", "created_at"])
NEW = ("ix_webhook_deliveries_endpoint_id_created_at_id", ["endpoint_id", "created_at", "id"])


def upgrade() -> None:
    op.create_index(NEW[0], TABLE, NEW[1])
    op.drop_index(OLD[0], table_name=TABLE)


def downgrade() -> None:
    op.create_index(OLD[0], TABLE, OLD[1])
    op.drop_index(NEW[0], table_name=TABLE)
