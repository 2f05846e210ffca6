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


def main() -> None:
    """``python -m persistence.migrate``: upgrade the database named by DATABASE_URL."""
    from persistence.settings import settings_or_exit

    upgrade_database(settings_or_exit().database_url)


if __name__ == "__main__":
    main()
