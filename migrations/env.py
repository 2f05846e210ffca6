"""Alembic environment: migrates the database named by DATABASE_URL (via the Settings class).

``persistence.migrate.upgrade_database(url)`` passes its URL in ``config.attributes["url"]``;
the ``alembic`` command line falls back to ``Settings().database_url``.
"""

from __future__ import annotations

from alembic import context
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from persistence.db import create_db_engine, settings_refused_by_database
from persistence.models import Base
from persistence.settings import settings_or_exit

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.attributes.get("url")
    return str(url) if url else settings_or_exit().database_url


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``) without a connection."""
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


#: The Postgres advisory lock every migration run holds for its transaction (any fixed number:
#: "rift" in ASCII). Several processes migrating one database at once (compose's api scaled to N
#: replicas runs `alembic upgrade head` in each) each ran the same CREATE TABLEs, and all but one
#: stopped on a duplicate-key error with a traceback. Behind the lock the later ones wait, then
#: read the revision the first one committed and find nothing left to do.
MIGRATION_LOCK_ID = 0x72696674


def _serialize_migrations(connection: Connection) -> None:
    """Wait for any other migration run on this database (Postgres; SQLite's own write lock
    serializes its writers already). Released with the transaction."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})


def _connect(engine: Engine) -> Connection:
    """The connection to migrate on; one that cannot be opened stops with one line naming
    DATABASE_URL (never the URL: it may hold the password) instead of a 120-line traceback."""
    try:
        return engine.connect()
    except OperationalError as exc:
        refused = settings_refused_by_database(exc)
        reason = refused or " ".join(str(exc.orig or exc).split())[:300]
        verb = "refused this connection" if refused else "cannot be reached"
        raise SystemExit(f"rift: DATABASE_URL: the database {verb}: {reason}") from None


def _refuse_unknown_revision(connection: Connection) -> None:
    """Stop with one line when the database was migrated by a newer release (a revision this
    code's migrations/ lacks): rolling the code back, compose's `alembic upgrade head` ended
    in Alembic's "Can't locate revision identified by '0027'" (a traceback under `python -m
    persistence.migrate`) and the container restarted for ever."""
    command = getattr(config.cmd_opts, "cmd", None)
    if command is not None and command[0].__name__ == "stamp":
        return  # `alembic stamp --purge REV`: the operator overrides the record on purpose
    current = MigrationContext.configure(connection).get_current_revision()
    if current is None:
        return
    script = ScriptDirectory.from_config(config)
    if current not in {revision.revision for revision in script.walk_revisions()}:
        raise SystemExit(f"rift: the database schema is at migration {current}, which this code "
                         "does not know: the database was migrated by a newer release; deploy "
                         "that release, or with its code run `alembic downgrade "
                         f"{script.get_current_head()}` first")


def _sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    """Turn SQLite's foreign-key enforcement on or off for this connection. Only outside a
    transaction: SQLite ignores the pragma inside one, so it goes to the driver's connection
    before SQLAlchemy begins one."""
    if connection.dialect.name == "sqlite":
        connection.connection.driver_connection.execute(  # type: ignore[union-attr]
            f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def _check_sqlite_foreign_keys(connection: Connection) -> None:
    """Refuse (and so roll back) a migration that left a row pointing at no row: the check
    SQLite's own procedure for changing a table ends with, since enforcement was off."""
    if connection.dialect.name != "sqlite":
        return
    broken = connection.execute(text("PRAGMA foreign_key_check")).all()
    if broken:
        raise SystemExit(f"rift: the migration left rows whose foreign keys point at no row "
                         f"(table, rowid, parent): {[tuple(row[:3]) for row in broken[:5]]}")


def run_migrations_online() -> None:
    """Connect and migrate; SQLite gets the same pragmas as the service's own engine, except
    foreign keys: batch mode changes a SQLite table by copying it to a new one and dropping the
    old, and with enforcement on, that DROP deletes the rows of every table referencing it
    (ON DELETE CASCADE: a job's stages, events, labels...) or fails (RESTRICT: the upgrade
    from 0001 of a database holding a job stopped at 0002's rebuild of ``checkpoints``)."""
    engine = create_db_engine(_database_url())
    try:
        with _connect(engine) as connection:
            _sqlite_foreign_keys(connection, on=False)
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                # SQLite cannot ALTER most things; batch mode rebuilds tables in later revisions.
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                # Before run_migrations reads the current revision, so a waiting run reads the
                # one the run before it committed.
                _serialize_migrations(connection)
                _refuse_unknown_revision(connection)
                context.run_migrations()
                _check_sqlite_foreign_keys(connection)
            _sqlite_foreign_keys(connection, on=True)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
