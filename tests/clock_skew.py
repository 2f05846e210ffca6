"""A process whose clock is off by a fixed amount: what a machine without NTP looks like to the
service. Every part of the service reads the time through ``persistence.models.utcnow``, which
calls ``datetime.now`` of that module; replacing that class shifts the whole process's clock
(its leases, heartbeats, event times) and nothing else (``time.monotonic``, the database's
clock, other processes).

    RIFT_TEST_CLOCK_SKEW_SECONDS=-120 python -m tests.clock_skew -A worker.celery_app worker ...

runs Celery's command line (a worker) in such a process: ``-120``, its clock two minutes behind.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, tzinfo

from persistence import models

#: The skew of the process started with ``python -m tests.clock_skew`` (seconds; negative: behind).
SKEW_ENV = "RIFT_TEST_CLOCK_SKEW_SECONDS"


def skewed_datetime(seconds: float) -> type[datetime]:
    """A ``datetime`` class whose ``now()`` runs ``seconds`` ahead of the real clock."""
    real, skew = datetime, timedelta(seconds=seconds)

    class SkewedDatetime(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> datetime:
            return real.now(tz) + skew  # a plain datetime, as the real one gives

    return SkewedDatetime


def install_clock_skew(seconds: float) -> None:
    """Shift this process's clock (``persistence.models.utcnow``) by ``seconds`` for good."""
    models.datetime = skewed_datetime(seconds)  # type: ignore[misc]


if __name__ == "__main__":
    install_clock_skew(float(os.environ[SKEW_ENV]))
    from celery.bin.celery import main as celery_main

    celery_main()
