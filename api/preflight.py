"""``python -m api.preflight``: the API's start-up checks on their own, for a start command that
launches several uvicorn processes (``--workers N``).

``create_app`` makes the same checks (settings, then the schema) and stops its process on a
failure; but uvicorn's supervisor restarts a worker process that stops, for ever, so with several
processes the one-line reason would scroll away in a restart loop. Run first (the image's
command does), a failure stops the container once, with that line and status 1. Imports no torch.
"""

from __future__ import annotations

from persistence.db import create_db_engine
from persistence.schema import refuse_outdated_schema
from persistence.settings import settings_or_exit


def main() -> None:
    settings = settings_or_exit()
    engine = create_db_engine(settings.database_url)
    try:
        refuse_outdated_schema(engine)
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
