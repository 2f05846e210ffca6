"""The embedded broker's queues (kombu's SQLAlchemy transport on SQLite): processes starting at the
same moment must not stop on each other's first use (:func:`persistence.queue.declare_queues`)."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from kombu.transport import sqlalchemy as kombu_sqlalchemy
from sqlalchemy import exc as sqlalchemy_errors

from persistence.queue import create_celery_app, declare_queues
from persistence.settings import load_settings

PROCESSES = 4


def _settings(broker: Path) -> Any:
    return load_settings(broker_url=f"sqla+sqlite:///{broker}", celery_queue="rift",
                         webhook_queue="rift-webhooks")


def _queue_names(broker: Path) -> list[str]:
    with sqlite3.connect(broker) as db:
        return sorted(name for (name,) in db.execute("SELECT name FROM kombu_queue"))


def _declare_after(barrier: Any, broker: str, results: Any) -> None:
    settings = _settings(Path(broker))
    app = create_celery_app(settings)
    barrier.wait()
    try:
        declare_queues(app, settings)
        results.put("ok")
    except Exception as exc:  # reported to the test, which names it
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_declaring_at_the_same_moment_all_start(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for round_ in range(3):  # a fresh broker file each round: the race is on the first use
        broker = tmp_path / f"broker-{round_}.db"
        barrier, results = context.Barrier(PROCESSES), context.Queue()
        processes = [context.Process(target=_declare_after, args=(barrier, str(broker), results))
                     for _ in range(PROCESSES)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
        outcomes = [results.get(timeout=5) for _ in processes]
        assert outcomes == ["ok"] * PROCESSES, outcomes
        assert _queue_names(broker) == ["rift", "rift-webhooks"]


def test_a_lost_race_is_tried_again_on_a_fresh_connection(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic: the first insert of the queue's row loses to "another process"."""
    original = kombu_sqlalchemy.Channel._get_or_create
    calls: list[str] = []

    def lose_first(self: Any, queue: str) -> Any:
        calls.append(queue)
        if len(calls) == 1:
            raise sqlalchemy_errors.IntegrityError(
                "INSERT INTO kombu_queue (name) VALUES (?)", (queue,),
                Exception("UNIQUE constraint failed: kombu_queue.name"))
        return original(self, queue)

    monkeypatch.setattr(kombu_sqlalchemy.Channel, "_get_or_create", lose_first)
    settings = _settings(tmp_path / "broker.db")
    declare_queues(create_celery_app(settings), settings)
    assert calls[:2] == ["rift", "rift"]
    assert _queue_names(tmp_path / "broker.db") == ["rift", "rift-webhooks"]


def test_a_broker_that_keeps_failing_still_raises(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def always_locked(self: Any, queue: str) -> Any:
        raise sqlalchemy_errors.OperationalError("INSERT", (queue,), Exception("database is locked"))

    monkeypatch.setattr(kombu_sqlalchemy.Channel, "_get_or_create", always_locked)
    monkeypatch.setattr("persistence.queue.time.sleep", lambda seconds: None)
    settings = _settings(tmp_path / "broker.db")
    with pytest.raises(sqlalchemy_errors.OperationalError, match="database is locked"):
        declare_queues(create_celery_app(settings), settings)


def test_other_brokers_are_left_to_their_transport() -> None:
    settings = load_settings(broker_url="redis://127.0.0.1:1/0")  # nothing listens there
    declare_queues(create_celery_app(settings), settings)  # no connection attempted
