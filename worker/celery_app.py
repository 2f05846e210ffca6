"""The worker's entry module: ``celery -A worker.celery_app worker -Q <CELERY_QUEUE>``.

The only place where the worker reads its settings (from the environment) and builds its app.
Invalid settings stop any ``celery -A worker.celery_app`` command with one line; ``celery
worker`` also checks the schema and ``WORKER_DEVICE`` before it takes a message
(:mod:`worker.preflight`).
"""

from __future__ import annotations

import os

# Before anything imports torch, which reads it once: CPU tensors of 2 MiB and more on
# transparent huge pages (see rift/__main__.py; a value the operator set is kept, "0" = off).
# The activations of a CPU stage's batches are larger than the 32 MiB glibc's mmap threshold
# can reach (worker/allocator.py), so without it each batch faults them in again page by page.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from typing import Any

from celery.signals import worker_init

from persistence.queue import create_celery_app, declare_queues
from persistence.settings import settings_or_exit
from worker.allocator import tune_malloc
from worker.json_output import use_json_output
from worker.preflight import check_worker_start
from worker.tasks import register_tasks

app = create_celery_app(settings_or_exit())
register_tasks(app)
use_json_output(app.settings)
# Here, before any task allocates: a prefork pool's children inherit it when forked.
tune_malloc(app.settings.worker_malloc_threshold_bytes)


@worker_init.connect(weak=False)
def _preflight(sender: Any = None, **_: Any) -> None:
    # The queues of -Q are set up by now (WorkController.setup_queues runs before this signal).
    check_worker_start(app.settings, queues=set(app.amqp.queues.consume_from))
    # Before the consumer declares them itself, racing an API that starts at the same moment.
    declare_queues(app, app.settings)
