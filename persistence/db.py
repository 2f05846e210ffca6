"""The database engine and session factory, built from the settings.

SQLite (the embedded default) is shared by the API process and the worker processes, so every
connection turns on WAL (readers do not block the writer), a busy timeout (a writer waits for the
lock instead of failing at once) and foreign keys (off by default in SQLite). Transactions start
with ``BEGIN IMMEDIATE``: a transaction that reads and then writes would otherwise hold a read
snapshot that SQLite cannot upgrade once another process has written, and fail with "database is
locked" instead of waiting. Postgres goes through psycopg 3.

JSON columns are read back with every object's keys in sorted order, on both backends: Postgres
stores them as JSONB, which keeps keys in its own order (shorter keys first), while SQLite keeps
the order they were written in, so the same job's ``config``, ``metrics`` and event payloads
came back in different orders from the two.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from persistence.settings import Settings

#: SQLite's busy timeout (s) of an engine made without settings (migrations, tests); the
#: services take ``DATABASE_LOCK_TIMEOUT_SECONDS``.
DEFAULT_SQLITE_LOCK_TIMEOUT_S = 30.0


def normalise_database_url(url: str | URL) -> URL:
    """Parse ``url``; a bare ``postgresql://`` or ``postgres://`` means psycopg 3."""
    if isinstance(url, str) and url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


#: What Postgres answers (libpq's "FATAL:" text; psycopg gives no SQLSTATE for a failed
#: connection) when it refuses the settings themselves: wrong password, unknown role or
#: database, no pg_hba.conf entry. Trying again never helps; every other connection failure
#: (refused, timed out, starting up, too many connections) may pass by itself.
REFUSED_SETTINGS_MARKERS = ("password authentication failed", "does not exist",
                            "no pg_hba.conf entry", "permission denied for database",
                            "authentication failed")


def settings_refused_by_database(exc: BaseException) -> str | None:
    """The server's reason when ``exc`` is a connection it refused for ``DATABASE_URL``'s own
    values (one line, never the URL: it may hold the password); None for any other failure."""
    text = " ".join(str(getattr(exc, "orig", None) or exc).split())
    if "FATAL:" not in text:
        return None
    reason = text[text.index("FATAL:"):]
    if not any(marker in reason for marker in REFUSED_SETTINGS_MARKERS):
        return None
    return reason[:300]


def _sorted_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return dict(sorted(pairs))


def load_json(text: str | bytes) -> Any:
    """A JSON column's value, every object's keys sorted (see the module docstring)."""
    return json.loads(text, object_pairs_hook=_sorted_object)


#: Postgres connect timeout (s) of an engine made without settings (migrations, tests).
DEFAULT_CONNECT_TIMEOUT_S = 5


#: SQLAlchemy's own pool defaults (connections kept, opened beyond them, seconds to wait).
DEFAULT_POOL = (5, 10, 30.0)


def create_db_engine(url: str | URL, *, echo: bool = False,
                     connect_timeout_s: int = DEFAULT_CONNECT_TIMEOUT_S,
                     pool: tuple[int, int, float] = DEFAULT_POOL,
                     sqlite_lock_timeout_s: float = DEFAULT_SQLITE_LOCK_TIMEOUT_S) -> Engine:
    """An engine for ``url`` (SQLite file or Postgres), set up for several processes at once;
    a Postgres connection that cannot be opened within ``connect_timeout_s`` fails. ``pool`` is
    (size, overflow, timeout seconds) of a Postgres engine's connection pool; a SQLite
    transaction waits ``sqlite_lock_timeout_s`` for the write lock, then fails "database is
    locked"."""
    parsed = normalise_database_url(url)
    if parsed.get_backend_name() != "sqlite":
        size, overflow, timeout_s = pool
        # pre_ping: a worker idle for hours must not fail its first query on a dropped connection.
        return create_engine(parsed, echo=echo, pool_pre_ping=True, json_deserializer=load_json,
                             pool_size=size, max_overflow=overflow, pool_timeout=timeout_s,
                             connect_args={"connect_timeout": connect_timeout_s})

    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        parsed,
        echo=echo,
        json_deserializer=load_json,
        connect_args={"timeout": sqlite_lock_timeout_s, "check_same_thread": False},
    )
    busy_timeout_ms = max(1, round(sqlite_lock_timeout_s * 1000))
    event.listen(engine, "connect",
                 lambda connection, record: _configure_sqlite_connection(connection,
                                                                         busy_timeout_ms))
    event.listen(engine, "begin", _begin_immediate)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, busy_timeout_ms: int) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite would otherwise start deferred
    # transactions lazily and behind our back).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # NORMAL is durable in WAL mode except for the last transactions on power loss.
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def check_database(engine: Engine) -> None:
    """Readiness probe: returns if the database answers ``SELECT 1``, else raises."""
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine``; objects stay readable after commit (``expire_on_commit=False``)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def session_factory_from_settings(settings: Settings) -> sessionmaker[Session]:
    """Engine + session factory for ``settings.database_url``."""
    return create_session_factory(create_db_engine(
        settings.database_url, echo=settings.database_echo,
        connect_timeout_s=settings.database_connect_timeout_seconds,
        pool=(settings.database_pool_size, settings.database_pool_overflow,
              settings.database_pool_timeout_seconds),
        sqlite_lock_timeout_s=settings.database_lock_timeout_seconds))
