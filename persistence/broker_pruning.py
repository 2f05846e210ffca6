"""Removing the messages kombu's SQLAlchemy transport (the embedded broker) has delivered.

That transport hands a message out by setting its row's ``visible`` to false and never deletes
the row (kombu 5's ``Channel._get``; only a queue purge deletes): every stage, shard, candidate,
webhook and materialization message ever sent stays in ``kombu_message``, so the broker file of
an embedded service grows for as long as it runs. A row with ``visible`` false is never read
again: the transport selects only visible rows, a worker holds the message it took in memory,
and the acknowledgement touches no row (a worker stopped before acknowledging puts the message
back as a new row). Deleting those rows is therefore safe at any moment; the janitor does it
(:func:`persistence.janitor.run_janitor`). Redis and the other brokers remove delivered
messages themselves.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine, create_engine, inspect, make_url, text
from sqlalchemy.exc import SQLAlchemyError

logger = logging.getLogger(__name__)

#: kombu's default table name (``table_name_prefix`` "kombu_"; the service sets no other).
MESSAGE_TABLE = "kombu_message"

#: Seconds a delete waits for the broker file's write lock (as the service's own connections).
SQLITE_LOCK_TIMEOUT_S = 30


def sqlalchemy_broker_database(broker_url: str) -> str | None:
    """The database URL behind an ``sqla+`` broker URL; None for any other broker."""
    if not broker_url.lower().startswith("sqla+"):
        return None
    return broker_url[len("sqla+"):]


def prune_delivered_messages(broker_url: str, *, dry_run: bool = False) -> int:
    """Delete the delivered messages of an ``sqla+`` broker (``dry_run``: count them only);
    returns how many. Nothing to do (0) for another broker or one that has sent nothing yet
    (a SQLite file not there yet is not created). A broker that cannot be used is logged and
    counts 0: the next pass tries again, and the janitor's other work goes on."""
    database = sqlalchemy_broker_database(broker_url)
    if database is None:
        return 0
    url = make_url(database)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" \
            and not Path(url.database).is_file():
        return 0
    engine = _engine(database)
    try:
        if not inspect(engine).has_table(MESSAGE_TABLE):
            return 0
        with engine.begin() as connection:
            if dry_run:
                return int(connection.execute(text(
                    f"SELECT count(*) FROM {MESSAGE_TABLE} WHERE NOT visible")).scalar_one())
            return connection.execute(text(
                f"DELETE FROM {MESSAGE_TABLE} WHERE NOT visible")).rowcount
    except SQLAlchemyError as exc:
        logger.warning("janitor: cannot remove the broker's (BROKER_URL) delivered messages: %s; "
                       "will retry", " ".join(str(exc).split())[:300])
        return 0
    finally:
        engine.dispose()


def _engine(database: str) -> Engine:
    url = make_url(database)
    if url.get_backend_name() == "sqlite":
        return create_engine(url, connect_args={"timeout": SQLITE_LOCK_TIMEOUT_S})
    return create_engine(url)
