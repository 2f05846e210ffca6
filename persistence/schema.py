"""Is the database's schema the one this code was written for?

The schema is made only by the migrations (:mod:`persistence.migrate`), which the API and the
workers never run themselves: several processes starting at once must not race to migrate, and a
deployment decides when a migration runs (the compose file runs it before the API starts). So
each entry point asks here first and refuses to start against a database that was never migrated
or is behind, with the command that fixes it, instead of answering every request with a 500
about a missing table or column. ``/readyz`` asks too, so a database swapped under a running API
shows up there.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from persistence.db import settings_refused_by_database
from persistence.migrate import alembic_config

logger = logging.getLogger(__name__)

#: What an operator runs to migrate (the compose file runs `alembic upgrade head`, the same).
MIGRATE_COMMAND = "python -m persistence.migrate"


class SchemaNotCurrent(Exception):
    """The database's schema is missing, older or newer than this code's; the message says which
    and what to run. ``ahead``: migrated by a newer release (a revision this code does not
    know), which this code can still serve (see :func:`refuse_outdated_schema`)."""

    def __init__(self, message: str, *, current: str | None, expected: str,
                 ahead: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.current = current
        self.expected = expected
        self.ahead = ahead


@lru_cache(maxsize=1)
def expected_revision() -> str:
    """The newest migration's revision (read once per process from ``migrations/``)."""
    script = ScriptDirectory.from_config(alembic_config(""))
    head = script.get_current_head()
    assert head is not None, "migrations/ has no revision"
    return head


@lru_cache(maxsize=1)
def _known_revisions() -> frozenset[str]:
    script = ScriptDirectory.from_config(alembic_config(""))
    return frozenset(revision.revision for revision in script.walk_revisions())


def current_revision(engine: Engine) -> str | None:
    """The revision recorded in the database (None: never migrated). Raises what the driver
    raises when the database cannot be reached."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def check_schema(engine: Engine, *, then: str = "then start again") -> None:
    """Return if the database is at :func:`expected_revision`, else raise
    :class:`SchemaNotCurrent`; a connection error propagates (the database is down, which is a
    readiness question, not a schema one). ``then`` ends the advice: what to do once migrated."""
    current = current_revision(engine)
    expected = expected_revision()
    if current == expected:
        return
    if current is None:
        message = (f"the database has no schema (never migrated): run `{MIGRATE_COMMAND}` "
                   f"with the same DATABASE_URL, {then}")
    elif current in _known_revisions():
        message = (f"the database schema is at migration {current}, this code needs {expected}: "
                   f"run `{MIGRATE_COMMAND}` with the same DATABASE_URL, {then}")
    else:
        message = (f"the database schema is at migration {current}, which this code does not "
                   f"know (it needs {expected}): the database was migrated by a newer release; "
                   "deploy that release")
        raise SchemaNotCurrent(message, current=current, expected=expected, ahead=True)
    raise SchemaNotCurrent(message, current=current, expected=expected)


#: Revisions ahead of this code already logged: ``/readyz`` is probed every few seconds.
_ahead_logged: set[str | None] = set()


def log_schema_ahead(exc: SchemaNotCurrent) -> None:
    """Warn, once per revision, that this process serves a schema a newer release migrated (see
    :func:`refuse_outdated_schema` for why it may)."""
    if exc.current in _ahead_logged:
        return
    _ahead_logged.add(exc.current)
    logger.warning("%s; this release keeps serving meanwhile (its migrations only add, so a "
                   "rolling deploy's older processes still work)", exc.message)


def refuse_outdated_schema(engine: Engine) -> None:
    """For an entry point starting up: stop the process (``SystemExit``, one line) when the
    schema is missing or behind, or when the server refuses ``DATABASE_URL``'s credentials or
    database name. A database that cannot be reached yet is only logged: the process starts,
    ``/readyz`` says the database is down, and the check runs again there.

    A schema migrated by a newer release is only logged too: a rolling deploy migrates first
    and replaces processes one by one, so an older API or worker that restarts meanwhile (a
    crash, a scale-out, a rollback) must start; the migrations only add tables, nullable
    columns and columns with a server default (README "Schema and devices at start")."""
    try:
        check_schema(engine)
    except SchemaNotCurrent as exc:
        if exc.ahead:
            log_schema_ahead(exc)
            return
        raise SystemExit(f"rift: {exc.message}") from None
    except Exception as exc:  # the driver's connection errors (OperationalError, OSError...)
        refused = settings_refused_by_database(exc)
        if refused is not None:
            raise SystemExit(f"rift: DATABASE_URL: the database refused this connection: "
                             f"{refused}") from None
        logger.warning("database unreachable at start (DATABASE_URL), schema not checked: %s",
                       " ".join(str(getattr(exc, "orig", None) or exc).split())[:300])


def require_usable_database(engine: Engine, *, then: str) -> None:
    """For a one-shot command (the janitor): stop (``SystemExit``, one line naming
    ``DATABASE_URL``, never the URL) when the schema is not current or the database cannot be
    opened at all. Unlike a service, such a command has nothing to wait for: before, it ended
    in SQLAlchemy's traceback ("no such table", "connection refused")."""
    try:
        check_schema(engine, then=then)
    except SchemaNotCurrent as exc:
        raise SystemExit(f"rift: {exc.message}") from None
    except Exception as exc:  # the driver's connection errors (OperationalError, OSError...)
        refused = settings_refused_by_database(exc)
        reason = refused or " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        verb = "refused this connection" if refused else "cannot be reached"
        raise SystemExit(f"rift: DATABASE_URL: the database {verb}: {reason}") from None
