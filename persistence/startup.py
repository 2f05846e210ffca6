"""What a service process checks before it serves (``python -m api.preflight``, ``celery
worker``): the settings were read by then (:func:`persistence.settings.settings_or_exit`); here the
database schema is current and the object store accepts this deployment's bucket and keys.

A failure that an operator must fix (schema not current, bucket missing, keys refused) stops
the process with one line (``SystemExit``); a dependency that merely cannot be reached yet is
logged and left to ``/readyz``, so a process started alongside its database or S3 server does
not crash-loop.
"""

from __future__ import annotations

import logging

from persistence.db import create_db_engine
from persistence.schema import refuse_outdated_schema
from persistence.settings import Settings
from persistence.storage import ObjectStore, StoreError, StoreMisconfigured

logger = logging.getLogger(__name__)


def refuse_misconfigured_store(store: ObjectStore) -> None:
    """Stop the process when the store refuses its settings; log when it cannot be reached."""
    try:
        store.check()
    except StoreMisconfigured as exc:
        raise SystemExit(f"rift: object store: {exc}") from None
    except StoreError as exc:
        logger.warning("object store unreachable at start: %s", exc)


def check_service_start(settings: Settings) -> None:
    """The schema, then the store, of ``settings``; returns when the process may serve."""
    engine = create_db_engine(settings.database_url,
                              connect_timeout_s=settings.database_connect_timeout_seconds)
    try:
        refuse_outdated_schema(engine)
    finally:
        engine.dispose()
    refuse_misconfigured_store(settings.build_object_store())
