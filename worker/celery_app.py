"""The worker's entry module: ``celery -A worker.celery_app worker -Q <CELERY_QUEUE>``.

The only place where the worker reads its settings (from the environment) and builds its app.
"""

from __future__ import annotations

from persistence.queue import create_celery_app
from persistence.settings import Settings
from worker.tasks import register_tasks

app = create_celery_app(Settings())
register_tasks(app)
