"""Settings a worker alone uses, at its start (``worker.preflight.check_worker_start``, what
Celery's ``worker_init`` runs). ``DATA_ROOT``: a file, or a folder the operator named that is not
there, stops the start with one line naming the setting and the path; the default folder missing
is only logged (a deployment using uploaded datasets alone never reads it). Before, nothing
looked at it: the worker took every job naming a built-in dataset and failed each one.
``MLFLOW_TRACKING_URI`` without the mlflow extra stops it too (was a warning event per job)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from persistence.settings import Settings
from tests.service_fixtures import WorkerProcess

ROOT = Path(__file__).resolve().parents[2]
#: The mlflow package made unfindable, as where the extra is not installed.
WITHOUT_MLFLOW = "import sys\nsys.modules['mlflow'] = None\n"
CHECK = ("from persistence.settings import settings_or_exit\n"
         "from worker.preflight import check_worker_start\n"
         "check_worker_start(settings_or_exit())\n")


def start_checks(cwd: Path, sqlite_url: str, *, prelude: str = "",
                 **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(PYTHONPATH=str(ROOT), LOG_FORMAT="text", DATABASE_URL=sqlite_url,
               BROKER_URL="memory://", STORE_ROOT=str(cwd / "objects"),
               WORK_DIR=str(cwd / "work"), **settings)
    return subprocess.run([sys.executable, "-c", prelude + CHECK], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_data_root_that_is_a_file_stops_the_start(sqlite_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("not a folder")
    result = start_checks(tmp_path, sqlite_url, DATA_ROOT=str(data))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"rift: DATA_ROOT: {str(data)!r} is not a readable folder (ENOTDIR: Not a directory); "
        "set DATA_ROOT to the folder holding the built-in datasets, readable by this user"]


def test_a_named_data_root_that_is_missing_stops_the_start(sqlite_url: str,
                                                          tmp_path: Path) -> None:
    # DATA_ROOT=/data with its volume not mounted: the worker never makes it.
    data = tmp_path / "mnt" / "data"
    result = start_checks(tmp_path, sqlite_url, DATA_ROOT=str(data))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"rift: DATA_ROOT: {str(data)!r} is not a readable folder (ENOENT: No such file or "
        "directory); set DATA_ROOT to the folder holding the built-in datasets, readable by "
        "this user"]
    assert not data.exists()


def test_the_default_data_root_missing_is_only_logged(sqlite_url: str, tmp_path: Path) -> None:
    result = start_checks(tmp_path, sqlite_url)
    assert result.returncode == 0, result.stderr
    assert ("DATA_ROOT: 'var/data' is not a readable folder (ENOENT: No such file or directory) "
            "at start: jobs naming a built-in dataset") in result.stderr


def test_a_readable_data_root_passes_quietly(sqlite_url: str, tmp_path: Path) -> None:
    (tmp_path / "data" / "cifar-10-batches-py").mkdir(parents=True)
    result = start_checks(tmp_path, sqlite_url, DATA_ROOT=str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert "DATA_ROOT" not in result.stderr


def test_an_mlflow_uri_without_the_mlflow_extra_stops_the_start(sqlite_url: str,
                                                               tmp_path: Path) -> None:
    # Was: the worker started, ran each job, then failed each export with ModuleNotFoundError
    # (a warning event per job). The URI is not shown: it may hold a password.
    result = start_checks(tmp_path, sqlite_url, prelude=WITHOUT_MLFLOW, DATA_ROOT=str(tmp_path),
                          MLFLOW_TRACKING_URI="http://user:secret@mlflow:5000")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "rift: MLFLOW_TRACKING_URI is set, but the mlflow package is not installed here: pip "
        "install 'rift-service[mlflow]' (the image: docker build --build-arg EXTRAS=mlflow .), "
        "or unset MLFLOW_TRACKING_URI"]


def test_without_an_mlflow_uri_the_extra_is_not_needed(sqlite_url: str, tmp_path: Path) -> None:
    result = start_checks(tmp_path, sqlite_url, prelude=WITHOUT_MLFLOW)
    assert result.returncode == 0, result.stderr
    assert "MLFLOW" not in result.stderr


def test_an_mlflow_uri_with_the_extra_installed_passes(sqlite_url: str, tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    result = start_checks(tmp_path, sqlite_url, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db")
    assert result.returncode == 0, result.stderr
    assert "MLFLOW" not in result.stderr


@pytest.mark.parametrize("uri", ["htp://mlflow:5000", "mlflow:5000", "s3://bucket/mlruns"])
def test_an_mlflow_uri_of_a_scheme_mlflow_cannot_track_to_stops_the_start(
        sqlite_url: str, tmp_path: Path, uri: str) -> None:
    # Was: the worker started and each job's export failed after it succeeded (a warning event
    # per job: UnsupportedModelRegistryStoreURIException, naming no setting).
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    result = start_checks(tmp_path, sqlite_url, DATA_ROOT=str(tmp_path), MLFLOW_TRACKING_URI=uri)
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("rift: MLFLOW_TRACKING_URI has the scheme "), line
    assert "http, https" in line and "sqlite:///mlflow.db" in line


def test_an_mlflow_file_store_stops_the_start_unless_mlflow_allows_it(sqlite_url: str,
                                                                      tmp_path: Path) -> None:
    # MLflow 3 refuses a file store ("maintenance mode") unless MLFLOW_ALLOW_FILE_STORE=true:
    # each job's export failed with that after the job.
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    for uri in ((tmp_path / "mlruns").as_uri(), "./mlruns"):
        result = start_checks(tmp_path, sqlite_url, DATA_ROOT=str(tmp_path),
                              MLFLOW_TRACKING_URI=uri)
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip().splitlines() == [
            "rift: MLFLOW_TRACKING_URI is a file store (a folder), which MLflow 3 refuses unless "
            "MLFLOW_ALLOW_FILE_STORE=true; use a database (sqlite:///mlflow.db) or a tracking "
            "server, or set MLFLOW_ALLOW_FILE_STORE=true"]
        allowed = start_checks(tmp_path, sqlite_url, DATA_ROOT=str(tmp_path),
                               MLFLOW_TRACKING_URI=uri, MLFLOW_ALLOW_FILE_STORE="true")
        assert allowed.returncode == 0, allowed.stderr


def test_an_mlflow_model_name_mlflow_refuses_stops_the_start(sqlite_url: str,
                                                              tmp_path: Path) -> None:
    # Was: each job's run logged, then its model version refused ("Invalid model name ...
    # Names cannot contain '/' or ':'"), a warning event per job.
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    result = start_checks(tmp_path, sqlite_url, DATA_ROOT=str(tmp_path),
                          MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db",
                          MLFLOW_MODEL_NAME="team/rift:tuned")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "rift: MLFLOW_MODEL_NAME 'team/rift:tuned' holds '/' or ':', which MLflow refuses in a "
        "registered model's name; choose another"]


def launch_celery_worker(tmp_path: Path, sqlite_url: str, queue: str) -> WorkerProcess:
    """A real ``celery worker -Q queue`` with the stage workers' environment of compose: a
    ``DATA_ROOT`` that is not mounted here and a ``WORKER_DEVICE`` this host lacks."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(PYTHONPATH=str(ROOT), LOG_FORMAT="text", DATABASE_URL=sqlite_url,
               BROKER_URL="memory://", STORE_ROOT=str(tmp_path / "objects"),
               WORK_DIR=str(tmp_path / "work"), DATA_ROOT=str(tmp_path / "mnt" / "data"),
               WORKER_DEVICE="cuda:7")
    log_path = tmp_path / f"worker-{queue}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo",
             "-Q", queue, "--without-gossip", "--without-mingle", "--without-heartbeat",
             "--loglevel=INFO", "-n", f"{queue}@%h"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return WorkerProcess(process, log_path, queue)


def test_a_webhook_worker_starts_without_the_stage_workers_data_and_device(
        sqlite_url: str, tmp_path: Path) -> None:
    # compose's `webhooks` service shares the stage worker's environment (DATA_ROOT=/data) but
    # mounts no /data: it stopped at every start on the DATA_ROOT check, so no webhook was ever
    # delivered. It reads no dataset, runs no model and exports nothing.
    worker = launch_celery_worker(tmp_path, sqlite_url, Settings().webhook_queue)
    try:
        worker.wait_ready()
        # Its registration (a heartbeat thread's, after "ready") names no DATA_ROOT either: it
        # said "DATA_ROOT holds no built-in dataset", which a check run before it missed.
        deadline = time.monotonic() + 60
        while "registered; queues rift-webhooks" not in worker.log():
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.1)
        assert "DATA_ROOT" not in worker.log() and "WORKER_DEVICE" not in worker.log()
    finally:
        worker.discard()


def test_a_stage_worker_still_checks_them_at_its_start(sqlite_url: str, tmp_path: Path) -> None:
    worker = launch_celery_worker(tmp_path, sqlite_url, "rift,rift-webhooks")
    try:
        assert worker.process.wait(timeout=120) == 1, worker.log()
    finally:
        worker.discard()
    assert (f"rift: DATA_ROOT: {str(tmp_path / 'mnt' / 'data')!r} is not a readable folder "
            "(ENOENT: No such file or directory)") in worker.log()


def test_a_worker_of_a_queue_the_service_never_sends_to_stops_the_start(
        sqlite_url: str, tmp_path: Path) -> None:
    # `-Q rfit` started a worker that waited for ever, counted as live, while jobs waited for it.
    worker = launch_celery_worker(tmp_path, sqlite_url, "rift,rfit")
    try:
        assert worker.process.wait(timeout=120) == 1, worker.log()
    finally:
        worker.discard()
    assert ("rift: this worker consumes 'rfit', where the service sends nothing: stages go to "
            "CELERY_QUEUE ('rift'), webhook deliveries to WEBHOOK_QUEUE ('rift-webhooks')"
            ) in worker.log()
