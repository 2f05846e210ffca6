"""The validator client (``api/validation.py``): credentials never reach the child, its limits are
applied, at most ``validation_max_concurrency`` children run at once, and a check past its time
limit is a 422 naming the limit."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from api.errors import InvalidInput, ServiceUnavailable
from api.validation import CHILD_VARIABLES, INHERITED_VARIABLES, Validator
from persistence.settings import Settings
from rift.errors import DatasetError


def settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]


def test_child_sees_no_credentials_and_has_its_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"DATABASE_URL": "postgresql://u:pw@db/rift", "BROKER_URL": "redis://:pw@r/0",
               "S3_ACCESS_KEY": "AKIA", "S3_SECRET_KEY": "s3cr3t", "AWS_SECRET_ACCESS_KEY": "x",
               "RIFT_API_KEY": "rift_abc"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    probe = Validator(settings(validation_memory_bytes=512 * 1024**2,
                               validation_cpu_seconds=7)).probe()
    allowed = {*INHERITED_VARIABLES, *CHILD_VARIABLES, "PYTHONPATH"}
    assert set(probe["environment"]) <= allowed
    assert not set(secrets) & set(probe["environment"])
    assert probe["limits"]["data"] == 512 * 1024**2
    assert probe["limits"]["cpu"] == 7
    assert probe["limits"]["core"] == 0
    assert probe["torch_imported"] is False


def test_at_most_the_configured_number_of_checks_run_at_once() -> None:
    validator = Validator(settings(validation_max_concurrency=2))
    spans: list[tuple[float, float]] = []

    def run() -> None:
        probe = validator.probe(sleep_seconds=0.3)
        spans.append((probe["started"], probe["finished"]))

    threads = [threading.Thread(target=run) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(spans) == 5
    # The largest number of children alive at one instant, from their own clocks.
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    alive = peak = 0
    for _, change in events:
        alive += change
        peak = max(peak, alive)
    assert peak == 2


def test_busy_slots_and_time_limit_are_answered_with_the_limit() -> None:
    validator = Validator(settings(validation_max_concurrency=1,
                                   validation_queue_timeout_seconds=0.2))
    holder = threading.Thread(target=validator.probe, kwargs={"sleep_seconds": 2.0})
    holder.start()
    try:
        with pytest.raises(ServiceUnavailable, match="validation slots"):
            threading.Event().wait(0.5)
            validator.probe()
    finally:
        holder.join()
    slow = Validator(settings(validation_timeout_seconds=0.5))
    with pytest.raises(InvalidInput, match=r"0\.5 s") as caught:
        slow.probe(sleep_seconds=5)
    assert caught.value.code == "validation_limit"


def test_library_errors_come_back_as_library_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"neither zip nor tar" * 40)
    with pytest.raises(DatasetError, match=r"mine\.npz is neither"):
        Validator(settings()).inspect_dataset(junk, "mine.npz", 10**6)
