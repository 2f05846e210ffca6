"""Live events and webhooks: a NOTIFY trigger on job_events (Postgres), and the webhook tables.

Revision ID: 0005
Revises: 0001
Create Date: 2026-11-25 17:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: persistence.event_notify.POSTGRES_CHANNEL
CHANNEL = "rift_job_events"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # NOTIFY is delivered at commit, so a listener never hears of an event it cannot read yet.
        op.execute(f"""
            CREATE FUNCTION rift_notify_job_event() RETURNS trigger AS $$
            BEGIN
                PERFORM pg_notify('{CHANNEL}', NEW.job_id);
                RETURN NULL;
            END
            $$ LANGUAGE plpgsql
        """)
        op.execute("""
            CREATE TRIGGER job_events_notify AFTER INSERT ON job_events
            FOR EACH ROW EXECUTE FUNCTION rift_notify_job_event()
        """)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS job_events_notify ON job_events")
        op.execute("DROP FUNCTION IF EXISTS rift_notify_job_event()")
