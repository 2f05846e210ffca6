"""What a service process checks before it serves (``python -m api.preflight``, ``celery
worker``): the settings were read by then (:func:`persistence.settings.settings_or_exit`); here the
database accepts ``DATABASE_URL`` and its schema is current, a Redis broker accepts
``BROKER_URL``'s password and database number, and the object store accepts this deployment's
bucket and keys (or, local, ``STORE_ROOT`` is a folder it may write), and ``WORK_DIR`` is a
folder it may write.

A failure that an operator must fix (schema not current, credentials missing or refused, names
refused, bucket missing, a store root that is a file) stops the process with one line naming the
setting (``SystemExit``); a dependency that merely cannot be reached yet (connection refused,
timed out, a full disk) is logged and left to ``/readyz``, so a process started alongside its database,
Redis or S3 server does not crash-loop.
"""

from __future__ import annotations

import errno
import logging
import tempfile
from pathlib import Path

import redis
from redis import exceptions as redis_errors

from persistence.db import create_db_engine
from persistence.schema import refuse_outdated_schema
from persistence.settings import Settings
from persistence.storage import (
    PASSING_LOCAL_ERRORS,
    ObjectStore,
    StoreError,
    StoreMisconfigured,
)

logger = logging.getLogger(__name__)


def refuse_misconfigured_store(store: ObjectStore) -> None:
    """Stop the process when the store refuses its settings; log when it cannot be reached."""
    try:
        store.check()
    except StoreMisconfigured as exc:
        raise SystemExit(f"rift: object store: {exc}") from None
    except StoreError as exc:
        logger.warning("object store unreachable at start: %s", exc)


#: Seconds the start-up check waits for Redis to answer (its PING): a check, not an outage.
BROKER_CHECK_TIMEOUT_S = 3.0


def refuse_misconfigured_broker(settings: Settings) -> None:
    """Stop the process when a Redis broker refuses ``BROKER_URL``'s password or database
    number; log when it cannot be reached. Celery itself would retry such a broker for ever
    (``broker_connection_retry_on_startup``) and the API answer every job 503. The other
    brokers (the embedded ``sqla+``, ``memory://``) are checked by their first use."""
    if not settings.broker_url.lower().startswith(("redis://", "rediss://")):
        return
    client = redis.Redis.from_url(settings.broker_url,
                                  socket_connect_timeout=BROKER_CHECK_TIMEOUT_S,
                                  socket_timeout=BROKER_CHECK_TIMEOUT_S)
    try:
        client.ping()
    except (redis_errors.AuthenticationError, redis_errors.ResponseError) as exc:
        # AuthenticationError: WRONGPASS / NOAUTH; ResponseError: "DB index is out of range".
        reason = " ".join(str(exc).split())[:200]
        raise SystemExit(f"rift: BROKER_URL: Redis refused this connection: {reason}") from None
    except redis_errors.RedisError as exc:  # refused, timed out, loading: may pass by itself
        logger.warning("broker unreachable at start (BROKER_URL): %s",
                       " ".join(str(exc).split())[:200])
    finally:
        client.close()


def probe_writable_folder(folder: Path) -> None:
    """Create ``folder`` when missing and write (and drop) a file in it; raises ``OSError``."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder, prefix=".probe-"):
        pass


def os_reason(exc: OSError) -> str:
    """``ENOTDIR: Not a directory``: the error's name and text, without the path repeated."""
    return f"{errno.errorcode.get(exc.errno or 0, 'error')}: {exc.strerror or exc}"


def refuse_unwritable_work_dir(work_dir: Path) -> None:
    """Stop the process when ``WORK_DIR`` cannot hold its scratch files (a file in the way, no
    permission, a read-only mount); log when the disk is merely full or failing. The API spools
    every upload there and a worker fetches every input there: before, the API started and
    answered each upload 500 (``FileNotFoundError``) while ``/readyz`` said ready."""
    try:
        probe_writable_folder(work_dir)
    except OSError as exc:
        message = f"WORK_DIR: {str(work_dir)!r} is not a writable folder ({os_reason(exc)})"
        if exc.errno in PASSING_LOCAL_ERRORS:
            logger.warning("%s at start", message)
            return
        raise SystemExit(f"rift: {message}; set WORK_DIR to a folder this user may "
                         "write") from None


def check_service_start(settings: Settings) -> None:
    """The database and its schema, the broker, the store, then the scratch folder, of
    ``settings``; returns when the process may serve."""
    engine = create_db_engine(settings.database_url,
                              connect_timeout_s=settings.database_connect_timeout_seconds)
    try:
        refuse_outdated_schema(engine)
    finally:
        engine.dispose()
    refuse_misconfigured_broker(settings)
    refuse_misconfigured_store(settings.build_object_store())
    refuse_unwritable_work_dir(settings.work_dir)
