"""Emptying a test's Postgres database so that the next test can have it, instead of dropping it
and cloning the template again.

A DROP DATABASE forces a checkpoint of the whole cluster on PostgreSQL 15 (every dirty page of
every database written out, the other test processes' included) and a clone writes the
template's 8 MB again: 1-3 s of the server's time each on the loaded 2-core machine, which the
tests of a pool that ran dry waited for (4-26 s set-ups). Emptying takes one TRUNCATE.

A database is handed out again only when it is indistinguishable from a fresh clone: nobody is
connected to it, it accepts connections, has no settings of its own and no prepared
transaction, and its schema (tables, columns, indexes, constraints, sequences, triggers,
functions, types, schemas, extensions, the Alembic revision) is the one a fresh clone had
(:func:`schema_fingerprint`); then every table but ``alembic_version`` is truncated and every
sequence restarted, which leaves rows, sequences and table files as the clone's. Anything else
(a test that downgraded it, left it refusing connections, or a process still connected): the
caller drops it as before.
"""

from __future__ import annotations

from typing import Any

#: The catalogue queries whose answers make up a database's schema fingerprint.
_FINGERPRINT_QUERIES = (
    "SELECT nspname FROM pg_namespace ORDER BY 1",
    "SELECT extname, extversion FROM pg_extension ORDER BY 1",
    "SELECT c.relname, c.relkind, c.relpersistence, c.relrowsecurity FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1",
    "SELECT table_name, ordinal_position, column_name, data_type, udt_name, is_nullable, "
    "column_default, character_maximum_length, numeric_precision, numeric_scale, "
    "collation_name, is_identity FROM information_schema.columns "
    "WHERE table_schema = 'public' ORDER BY 1, 2",
    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
    "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
    "WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
    "SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger "
    "WHERE NOT tgisinternal ORDER BY 1, 2",
    "SELECT proname, md5(prosrc) FROM pg_proc WHERE pronamespace = 'public'::regnamespace "
    "ORDER BY 1, 2",
    "SELECT typname, typtype FROM pg_type WHERE typnamespace = 'public'::regnamespace "
    "ORDER BY 1",
    "SELECT sequencename, start_value, increment_by, data_type::text FROM pg_sequences "
    "WHERE schemaname = 'public' ORDER BY 1",
    "SELECT version_num FROM alembic_version ORDER BY 1",
)


def schema_fingerprint(connection: Any) -> tuple[tuple[tuple[Any, ...], ...], ...]:
    """The answers of every fingerprint query on the open psycopg ``connection``."""
    return tuple(tuple(tuple(row) for row in connection.execute(query))
                 for query in _FINGERPRINT_QUERIES)


def others_connected(admin: Any, name: str) -> int:
    """Sessions connected to database ``name``, besides ``admin``'s own."""
    row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                        "AND pid <> pg_backend_pid()", (name,)).fetchone()
    return int(row[0])


def reusable(admin: Any, name: str) -> bool:
    """Whether database ``name`` is closed to everyone, open to connections, and carries no
    setting nor prepared transaction of its own (``admin``: a connection to another database)."""
    row = admin.execute(
        "SELECT d.datallowconn, "
        "(SELECT count(*) FROM pg_db_role_setting s WHERE s.setdatabase = d.oid), "
        "(SELECT count(*) FROM pg_prepared_xacts x WHERE x.database = d.datname) "
        "FROM pg_database d WHERE d.datname = %s", (name,)).fetchone()
    return (row is not None and bool(row[0]) and row[1] == 0 and row[2] == 0
            and others_connected(admin, name) == 0)


def truncate_database(connection: Any, lock_timeout_s: float = 5.0) -> None:
    """Truncate every table of the public schema except ``alembic_version`` and restart every
    sequence, in one transaction (``connection``: psycopg, autocommit off). A lock someone
    still holds fails it after ``lock_timeout_s`` (the database is then dropped) instead of
    stalling the pool behind it."""
    connection.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
    tables = [row[0] for row in connection.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
        "AND tablename <> 'alembic_version' ORDER BY 1")]
    if tables:
        listed = ", ".join(f'"{table}"' for table in tables)
        connection.execute(f"TRUNCATE {listed} RESTART IDENTITY")
    for (sequence,) in connection.execute(
            "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'").fetchall():
        connection.execute(f'ALTER SEQUENCE "{sequence}" RESTART')
    connection.commit()
