"""The embedded broker's delivered messages (:mod:`persistence.broker_pruning`): kombu's
SQLAlchemy transport keeps every message it handed out as a row with ``visible`` false, so the
broker file of an embedded service grew with every stage, shard and webhook message ever sent.
The janitor (``python -m persistence.janitor``, and the workers' recovery loop) deletes them and
leaves the messages still waiting."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from persistence.queue import create_celery_app, declare_queues, enqueue_webhook
from persistence.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "rift-webhooks"


def _rows(broker: Path) -> list[tuple[int, bytes]]:
    with sqlite3.connect(broker) as db:
        return list(db.execute("SELECT visible, payload FROM kombu_message ORDER BY id"))


def _take(app: object, count: int) -> list[list[object]]:
    """Take ``count`` messages off the queue through kombu's transport, as a worker does."""
    taken = []
    with app.connection_for_read() as connection:  # type: ignore[attr-defined]
        channel = connection.default_channel
        for _ in range(count):
            message = channel.basic_get(QUEUE, no_ack=False)
            assert message is not None
            taken.append(message.decode()[0])  # the task's args
            message.ack()
    return taken


def _janitor(tmp_path: Path, database_url: str, broker_url: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(PYTHONPATH=str(ROOT), LOG_FORMAT="text", DATABASE_URL=database_url,
               BROKER_URL=broker_url, STORE_ROOT=str(tmp_path / "objects"),
               WORK_DIR=str(tmp_path / "work"))
    result = subprocess.run([sys.executable, "-m", "persistence.janitor"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_the_janitor_deletes_delivered_messages_and_keeps_waiting_ones(
        tmp_path: Path, sqlite_url: str) -> None:
    broker = tmp_path / "broker.db"
    broker_url = f"sqla+sqlite:///{broker}"
    settings = load_settings(broker_url=broker_url, webhook_queue=QUEUE)
    app = create_celery_app(settings)
    declare_queues(app, settings)
    for delivery in ("d1", "d2", "d3"):
        enqueue_webhook(app, delivery)
    assert _take(app, 2) == [["d1"], ["d2"]]
    # What kombu leaves: the two delivered messages stay, marked invisible.
    assert [visible for visible, _ in _rows(broker)] == [0, 0, 1]

    report = _janitor(tmp_path, sqlite_url, broker_url)

    assert report["delivered_broker_messages"] == 2
    assert [visible for visible, _ in _rows(broker)] == [1]
    assert _take(app, 1) == [["d3"]]  # the waiting message is still delivered


def test_nothing_to_prune_on_a_broker_that_never_sent(tmp_path: Path, sqlite_url: str) -> None:
    # A fresh embedded service runs its janitor before any message exists: no table yet.
    report = _janitor(tmp_path, sqlite_url, f"sqla+sqlite:///{tmp_path / 'broker.db'}")
    assert report["delivered_broker_messages"] == 0
