"""Run the Alembic migrations from Python (entry points, tests) instead of the ``alembic`` CLI.

The schema is only ever created by these migrations; nothing calls ``metadata.create_all``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

#: The repository root, where alembic.ini and migrations/ live.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def alembic_config(url: str) -> Config:
    """An Alembic config for the project's migrations, targeting the database at ``url``."""
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    # Passed as an attribute, not set_main_option: ConfigParser would mangle '%' in passwords.
    config.attributes["url"] = url
    return config


def upgrade_database(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision`` (default: the newest)."""
    command.upgrade(alembic_config(url), revision)


def downgrade_database(url: str, revision: str = "base") -> None:
    """Take the database at ``url`` down to ``revision`` (default: empty)."""
    command.downgrade(alembic_config(url), revision)


def main(argv: list[str] | None = None) -> None:
    """``python -m persistence.migrate``: upgrade the database named by DATABASE_URL. The
    arguments are read first: ``--help`` and ``--version`` answer without touching a database,
    and anything else (a revision) is refused rather than taken for "head"."""
    from persistence.command_line import service_parser
    from persistence.settings import settings_or_exit

    service_parser(
        "python -m persistence.migrate",
        "Upgrade the database named by DATABASE_URL to the newest migration of this code (as "
        "`alembic upgrade head`), holding a lock so that several processes migrating at once "
        "wait for each other.",
        "Another revision: `alembic upgrade REV` or `alembic downgrade REV` from the folder "
        "holding alembic.ini. Exit codes: 0 done (also when nothing was left to do), 1 invalid "
        "settings or a database that cannot be opened or migrated, 2 a usage error.",
    ).parse_args(argv)
    upgrade_database(settings_or_exit().database_url)


if __name__ == "__main__":
    main()
