"""``LOG_FORMAT=json`` for everything a ``celery worker`` writes itself, not only its log records.

Celery writes some lines past the logging system: its startup banner (a dozen lines of ASCII art,
queues and tasks, printed to ``sys.__stdout__``), a warning raised before its logging is set up
(printed by Python's ``warnings`` module), and its shutdown notices (``worker: Warm shutdown
(MainProcess)``, written with ``os.write`` from the signal handler). A log shipper reading the
worker's output as one JSON object per line got each of them as a parse error. With JSON logs the
banner is off (its facts are one JSON record), warnings go through logging from the start, and a
notice is written as one JSON line, still with ``os.write`` (the handler runs inside a signal
handler, where taking the logging lock can deadlock).

Output that bypasses Python altogether (a C library writing to file descriptor 2) stays as it is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

import celery.apps.worker
from celery.signals import celeryd_after_setup, celeryd_init

from persistence.logs import configure_logging
from persistence.settings import Settings

logger = logging.getLogger(__name__)


def json_notice(message: str) -> bytes:
    """``message`` as one JSON log line, shaped as :class:`persistence.logs.JsonFormatter`'s."""
    document = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "level": "WARNING",
                "logger": "celery.worker", "message": message.strip(), "job_id": None,
                "request_id": None}
    return (json.dumps(document, ensure_ascii=False) + "\n").encode("utf-8", "replace")


def _say_json(message: str, f: Any = sys.__stderr__) -> None:
    """Celery's ``safe_say`` (signal-safe ``os.write``), writing a JSON line instead of text."""
    # As Celery's: a lost notice must not abort the shutdown that sends it.
    with contextlib.suppress(OSError, AttributeError, ValueError):
        os.write(f.fileno(), json_notice(message))


def use_json_output(settings: Settings) -> None:
    """Connect the handlers that keep a JSON-logging worker's output JSON (no-op for ``text``)."""
    if settings.log_format != "json":
        return

    def before_start(instance: Any = None, **_: Any) -> None:
        instance.quiet = True  # the banner: its facts are logged once logging is set up
        # Records (and warnings) before Celery sets up its logging: JSON too. Celery replaces
        # this handler with its own, which tasks.py makes JSON (after_setup_logger).
        configure_logging("json", settings.log_level)
        logging.captureWarnings(True)
        celery.apps.worker.safe_say = _say_json  # looked up at call time by Celery

    def after_setup(sender: Any = None, instance: Any = None, **_: Any) -> None:
        queues = sorted(q.name for q in instance.app.amqp.queues.consume_from.values())
        logger.info("worker %s starting: queues %s, concurrency %s", sender, queues,
                    instance.concurrency,
                    extra={"worker": str(sender), "queues": queues,
                           "concurrency": instance.concurrency})

    celeryd_init.connect(before_start, weak=False)
    celeryd_after_setup.connect(after_setup, weak=False)
