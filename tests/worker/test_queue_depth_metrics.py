"""``rift_queue_depth{queue}`` of a worker's metrics counts the webhook queue beside the stage
queue: a webhook backlog (a receiver down, too few delivery workers) showed nowhere."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from persistence.settings import Settings
from worker.metrics import WorkerMetrics


@contextlib.contextmanager
def _no_database() -> Iterator[None]:
    raise ConnectionError("no database in this test")
    yield  # pragma: no cover


def depths(sizes: dict[str, int | Exception]) -> dict[str, float]:
    """The ``rift_queue_depth`` samples a scrape reads, the broker's queues holding ``sizes``."""
    def queue_size(queue: str) -> int:
        size = sizes[queue]
        if isinstance(size, Exception):
            raise size
        return size

    resources = SimpleNamespace(settings=Settings(celery_queue="gpu", webhook_queue="hooks",
                                                  prometheus_multiproc_dir=None),
                                session=_no_database)
    metrics = WorkerMetrics(resources, queue_size)
    text = generate_latest(metrics.registry).decode()
    return {sample.labels["queue"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "rift_queue_depth" for sample in family.samples}


@pytest.mark.filterwarnings("ignore")
def test_the_webhook_queue_is_measured_beside_the_stage_queue() -> None:
    assert depths({"gpu": 3, "hooks": 7}) == {"gpu": 3.0, "hooks": 7.0}


@pytest.mark.filterwarnings("ignore")
def test_a_queue_that_cannot_be_measured_leaves_the_other() -> None:
    assert depths({"gpu": OSError("broker down"), "hooks": 2}) == {"hooks": 2.0}


def test_a_workers_exposition_follows_the_conventions_an_operator_relies_on() -> None:
    from tests.api.report_checks import exposition_problems

    resources = SimpleNamespace(settings=Settings(celery_queue="gpu", webhook_queue="hooks",
                                                  prometheus_multiproc_dir=None),
                                session=_no_database)
    metrics = WorkerMetrics(resources, lambda queue: 3)
    metrics.observe_stage("mrc", "done", 2.0, "cuda:0 (NVIDIA H100 80GB HBM3)")
    metrics.materializations.labels("succeeded").inc()
    assert exposition_problems(generate_latest(metrics.registry).decode()) == []
