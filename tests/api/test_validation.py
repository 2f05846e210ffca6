"""The validator client (``api/validation.py``): credentials never reach the checks, their limits
are applied, at most ``validation_max_concurrency`` checks run at once, a check past its time
limit is a 422 naming the limit, a validator server that died is replaced, and a server started
ahead (``start``) is joined by a check that comes while it starts, which waits for it at most
``validation_queue_timeout_seconds``; a failed start is retried.

Servers are forked from the worker launcher (``validator_launch``), except the first test's,
which starts a fresh interpreter as the API does (and reads that server's initial
environment)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from api.errors import InvalidInput, ServiceUnavailable
from api.validation import (
    CHILD_VARIABLES,
    INHERITED_VARIABLES,
    ServerLauncher,
    ServerProcess,
    Validator,
    child_environment,
    fit_check_key,
    launch_subprocess,
)
from persistence.settings import Settings
from rift.errors import DatasetError

MakeValidator = Callable[..., Validator]


@pytest.fixture
def make_validator(validator_launch: ServerLauncher) -> Iterator[MakeValidator]:
    """``make_validator(launch=..., **settings)``: a Validator whose server is stopped after the
    test, started by ``launch`` (default: forked from the worker launcher)."""
    made: list[Validator] = []

    def make(launch: ServerLauncher = validator_launch, **overrides: object) -> Validator:
        made.append(Validator(Settings(**overrides), launch=launch))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for validator in made:
        validator.close()


def test_checks_see_no_credentials_and_have_their_limits(
    make_validator: MakeValidator, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {"DATABASE_URL": "postgresql://u:pw@db/rift", "BROKER_URL": "redis://:pw@r/0",
               "S3_ACCESS_KEY": "AKIA", "S3_SECRET_KEY": "s3cr3t", "AWS_SECRET_ACCESS_KEY": "x",
               "RIFT_API_KEY": "rift_abc"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    # A fresh interpreter, as in production: a forked server's /proc/<pid>/environ would be the
    # launcher's.
    validator = make_validator(launch_subprocess, validation_memory_bytes=3 * 1024**3,
                               validation_cpu_seconds=7)
    probe = validator.probe()
    # The server gets nothing of the API's environment but the allow-list (its own imports may
    # add variables, e.g. torch's cache folder, so the check's list is not compared whole).
    assert set(child_environment(os.environ)) <= {*INHERITED_VARIABLES, *CHILD_VARIABLES,
                                                  "PYTHONPATH"}
    assert not set(secrets) & set(probe["environment"])
    assert probe["limits"]["data"] == 3 * 1024**3
    assert probe["limits"]["cpu"] == 7
    assert probe["limits"]["core"] == 0
    # The server's initial environment (which /proc/<pid>/environ shows, of the server and of
    # every check it forks) holds none of them either.
    assert validator._server is not None
    environ = Path(f"/proc/{validator._server.pid}/environ")
    if environ.exists():
        names = {item.split(b"=", 1)[0].decode() for item in environ.read_bytes().split(b"\0")
                 if item}
        assert not set(secrets) & names


def test_at_most_the_configured_number_of_checks_run_at_once(
    make_validator: MakeValidator,
) -> None:
    validator = make_validator(validation_max_concurrency=2)
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
    # The largest number of checks alive at one instant, from their own clocks.
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    alive = peak = 0
    for _, change in events:
        alive += change
        peak = max(peak, alive)
    assert peak == 2


def test_busy_slots_and_time_limit_are_answered_with_the_limit(
    make_validator: MakeValidator,
) -> None:
    validator = make_validator(validation_max_concurrency=1,
                               validation_queue_timeout_seconds=0.2)
    # The server up first: a check waits for its start at most the queue timeout too.
    validator.start()
    assert validator.wait_ready(120) == "ready"
    holder = threading.Thread(target=validator.probe, kwargs={"sleep_seconds": 2.0})
    holder.start()
    try:
        threading.Event().wait(0.5)
        with pytest.raises(ServiceUnavailable, match="validation slots"):
            validator.probe()
    finally:
        holder.join()
    slow = make_validator(validation_timeout_seconds=0.5)
    with pytest.raises(InvalidInput, match=r"0\.5 s") as caught:
        slow.probe(sleep_seconds=5)
    assert caught.value.code == "validation_limit"
    assert caught.value.field == "VALIDATION_CPU_SECONDS"


def test_library_errors_come_back_and_a_dead_server_is_replaced(
    make_validator: MakeValidator, tmp_path: Path
) -> None:
    validator = make_validator()
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"neither zip nor tar" * 40)
    with pytest.raises(DatasetError, match=r"mine\.npz is neither"):
        validator.inspect_dataset(junk, "mine.npz", 10**6)
    server = validator._server
    assert server is not None
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    assert validator.probe()["limits"]["cpu"] > 0


def test_a_passed_fit_check_is_remembered_by_what_it_reads(make_validator: MakeValidator) -> None:
    from rift.config import RiftConfig
    from validator.service import warm_up_request

    request = warm_up_request()  # small_cnn on 8×8 grey images: fits
    config = RiftConfig.model_validate(request["config"])
    shapes = {key: tuple(shape) for key, shape in request["shapes"].items()}

    def with_finetune(**changes: object) -> RiftConfig:
        return config.model_copy(update={"finetune": config.finetune.model_copy(update=changes)})

    validator = make_validator()
    first = validator.check_fit(config, shapes, in_channels=1, image_size=8, num_features=None)
    # The model's forward FLOPs on one 1×8×8 input, counted by the check (small_cnn: 314,624).
    assert first.unknown_values == [] and first.example_flops == 314_624
    validator.close()  # a check that reaches the validator starts its server again
    other_training = with_finetune(lr=0.5, epochs=2).model_copy(update={"seed": 7})
    again = validator.check_fit(other_training, shapes, in_channels=1, image_size=8,
                                num_features=None)
    assert validator._server is None  # answered from what the first check found
    assert again == first  # the count with it: a job's compute estimate needs it too

    # What the check reads is part of the key: another module, model or geometry is checked.
    def key(spec: RiftConfig, **geometry: object) -> str:
        return fit_check_key(spec, {**request, **geometry})

    assert key(other_training) == key(config)
    assert len({key(config), key(with_finetune(module="conv1")), key(config, image_size=16),
                key(config.model_copy(update={"architecture": config.architecture.model_copy(
                    update={"num_classes": 12})})),
                key(config, shapes={**request["shapes"], "fc.bias": [11]})}) == 5


def test_a_check_that_comes_while_the_server_starts_waits_for_it(
    make_validator: MakeValidator, validator_launch: ServerLauncher
) -> None:
    launches: list[Sequence[str]] = []
    gate = threading.Event()

    def gated(args: Sequence[str], env: Mapping[str, str],
              cwd: Path) -> tuple[ServerProcess, bytes]:
        launches.append(args)
        gate.wait(30)  # a server that takes its time to import torch
        return validator_launch(args, env, cwd)

    validator = make_validator(gated, validation_queue_timeout_seconds=0.3)
    assert validator.state() == "stopped"
    validator.start()
    assert validator.state() == "starting"
    # Longer than the wait for a slot: answered as busy, naming that limit.
    with pytest.raises(ServiceUnavailable, match=r"still starting after 0\.3 s") as caught:
        validator.probe()
    assert caught.value.code == "validation_busy"
    assert validator.state() == "starting"
    gate.set()
    assert validator.wait_ready(60) == "ready"
    assert validator.probe()["server_pid"] == validator._server.pid  # type: ignore[union-attr]
    # The check joined the start in progress: one server, one launch.
    assert len(launches) == 1

    joined = make_validator(gated)  # the gate is open: a start that succeeds in time
    joined.start()
    assert joined.probe()["limits"]["cpu"] > 0  # waits for the start, no error
    assert len(launches) == 2


def test_a_failed_start_is_answered_503_and_retried(make_validator: MakeValidator,
                                                   validator_launch: ServerLauncher) -> None:
    import subprocess
    import sys

    failures = [True]

    def failing_once(args: Sequence[str], env: Mapping[str, str],
                     cwd: Path) -> tuple[ServerProcess, bytes]:
        if failures and failures.pop():
            # A server that ends before it says "ready" (say, a broken install).
            return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]), b""
        return validator_launch(args, env, cwd)

    validator = make_validator(failing_once)
    validator.start()
    assert validator.wait_ready(60) == "failed"
    assert validator.keep_started() in ("starting", "ready")  # what /readyz does
    assert validator.wait_ready(60) == "ready"
    assert validator.probe()["limits"]["cpu"] > 0

    failures.append(True)
    again = make_validator(failing_once)
    with pytest.raises(ServiceUnavailable, match="did not start") as caught:
        again.probe()  # no start ahead: the check starts it, and is told it failed
    assert caught.value.code == "validation_failed"
    assert again.probe()["limits"]["cpu"] > 0  # the next check starts it again
