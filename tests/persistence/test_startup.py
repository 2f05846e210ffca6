"""``python -m api.preflight`` against real servers (moto's S3, Postgres, Redis): a setting the
server refuses (a missing bucket, an unknown database or role, a Redis database number or
password, a store root that is a file) stops the start with one line naming the setting; a server
that does not answer yet does not (it is an outage for /readyz, not a setting to fix)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url

from persistence.settings import Settings
from tests.api.helpers import free_port
from tests.ports import PortTaken, on_a_free_port, says_port_taken
from tests.service_fixtures import POSTGRES_ADMIN_URL

ROOT = Path(__file__).resolve().parents[2]


def run_preflight(cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(PYTHONPATH=str(ROOT), LOG_FORMAT="text", **settings)
    return subprocess.run([sys.executable, "-m", "api.preflight"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def preflight(sqlite_url: str, endpoint: str, bucket: str, cwd: Path
              ) -> subprocess.CompletedProcess[str]:
    return run_preflight(cwd, DATABASE_URL=sqlite_url, BROKER_URL="memory://", STORE_KIND="s3",
                         S3_BUCKET=bucket, S3_ENDPOINT_URL=endpoint, S3_ACCESS_KEY="testing",
                         S3_SECRET_KEY="testing")


def test_a_missing_bucket_stops_the_start(sqlite_url: str, moto_s3_endpoint: str,
                                          tmp_path: Path) -> None:
    bucket = f"missing-{uuid.uuid4().hex[:8]}"
    result = preflight(sqlite_url, moto_s3_endpoint, bucket, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"rift: object store: bucket {bucket!r} at {moto_s3_endpoint} does not exist; "
        "create it first"], result.stderr


def test_an_existing_bucket_passes(sqlite_url: str, moto_s3_endpoint: str,
                                   tmp_path: Path) -> None:
    import boto3

    bucket = f"present-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_s3_endpoint, region_name="us-east-1",
                 aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    result = preflight(sqlite_url, moto_s3_endpoint, bucket, tmp_path)
    assert result.returncode == 0, result.stderr


def test_an_endpoint_not_answering_yet_is_only_logged(sqlite_url: str, tmp_path: Path) -> None:
    result = preflight(sqlite_url, f"http://127.0.0.1:{free_port()}", "rift", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "object store unreachable at start" in result.stderr


def _postgres(**parts: Any) -> str:
    """The test server's URL with a database, user or port of our choosing."""
    return make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql+psycopg", **parts
                                            ).render_as_string(hide_password=False)


@pytest.mark.service
@pytest.mark.parametrize(("parts", "refusal"), [
    ({"database": "rift_no_such_database"}, 'database "rift_no_such_database" does not exist'),
    ({"username": "rift_no_such_role", "database": "postgres"},
     'role "rift_no_such_role" does not exist')])
def test_a_database_refusing_the_url_stops_the_start(parts: dict[str, str], refusal: str,
                                                     tmp_path: Path) -> None:
    # It was logged as "unreachable" and the process served, /readyz failing for ever.
    result = run_preflight(tmp_path, DATABASE_URL=_postgres(**parts), BROKER_URL="memory://",
                           STORE_ROOT=str(tmp_path / "objects"))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"rift: DATABASE_URL: the database refused this connection: FATAL: {refusal}"]


@pytest.mark.service
def test_a_database_not_answering_yet_is_only_logged(sqlite_url: str, tmp_path: Path) -> None:
    url = _postgres(port=free_port())
    result = run_preflight(tmp_path, DATABASE_URL=url, BROKER_URL="memory://",
                           STORE_ROOT=str(tmp_path / "objects"))
    assert result.returncode == 0, result.stderr
    assert "database unreachable at start (DATABASE_URL)" in result.stderr


@pytest.mark.service
@pytest.mark.parametrize(("broker", "refusal"), [
    ("/99", "DB index is out of range"),
    ("rift-no-such-user:wrong@", "invalid username-password pair")])
def test_redis_refusing_the_broker_url_stops_the_start(broker: str, refusal: str,
                                                       redis_broker_url: str, sqlite_url: str,
                                                       tmp_path: Path) -> None:
    # Celery retried such a broker for ever and the API answered every job 503.
    base = redis_broker_url.rsplit("/", 1)[0]
    url = (f"{base}{broker}" if broker.startswith("/")
           else base.replace("redis://", f"redis://{broker}", 1) + "/0")
    result = run_preflight(tmp_path, DATABASE_URL=sqlite_url, BROKER_URL=url,
                           STORE_ROOT=str(tmp_path / "objects"))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "rift: BROKER_URL: Redis refused this connection: ") and refusal in lines[0], lines
    assert "wrong" not in lines[0]  # never the password


def test_redis_not_answering_yet_is_only_logged(sqlite_url: str, tmp_path: Path) -> None:
    result = run_preflight(tmp_path, DATABASE_URL=sqlite_url,
                           BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",
                           STORE_ROOT=str(tmp_path / "objects"))
    assert result.returncode == 0, result.stderr
    assert "broker unreachable at start (BROKER_URL)" in result.stderr


def test_a_store_root_that_is_a_file_stops_the_start(sqlite_url: str, tmp_path: Path) -> None:
    # It was logged as "unreachable" and every upload answered 503.
    (tmp_path / "objects").write_text("not a folder")
    result = run_preflight(tmp_path, DATABASE_URL=sqlite_url, BROKER_URL="memory://",
                           STORE_ROOT=str(tmp_path / "objects" / "store"))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rift: object store: the local object store "
                                                   "root ") and "check STORE_ROOT" in lines[0]


def test_the_start_empties_the_metrics_directory(sqlite_url: str, tmp_path: Path) -> None:
    # Files of an earlier run would be summed into this run's metrics (api/multiprocess_metrics).
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "counter_4242.db").write_bytes(b"an earlier run's counts")
    result = run_preflight(tmp_path, DATABASE_URL=sqlite_url, BROKER_URL="memory://",
                           STORE_ROOT=str(tmp_path / "objects"),
                           PROMETHEUS_MULTIPROC_DIR=str(metrics))
    assert result.returncode == 0, result.stderr
    assert list(metrics.iterdir()) == []


def test_a_metrics_directory_that_cannot_be_made_stops_the_start(sqlite_url: str,
                                                                 tmp_path: Path) -> None:
    # Was NotADirectoryError's traceback from api.preflight.
    (tmp_path / "shm").write_text("not a folder")
    metrics = tmp_path / "shm" / "rift-api-metrics"
    result = run_preflight(tmp_path, DATABASE_URL=sqlite_url, BROKER_URL="memory://",
                           STORE_ROOT=str(tmp_path / "objects"),
                           PROMETHEUS_MULTIPROC_DIR=str(metrics))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"rift: PROMETHEUS_MULTIPROC_DIR: {str(metrics)!r} is not a writable folder (ENOTDIR: "
        "Not a directory); name one this user may write, or unset it"]


def test_a_validation_socket_in_a_folder_others_may_write_stops_the_start(
        sqlite_url: str, tmp_path: Path) -> None:
    # api.preflight passed it; then each uvicorn process's create_app raised ValueError with a
    # traceback and uvicorn's supervisor restarted the processes for ever.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = run_preflight(tmp_path, DATABASE_URL=sqlite_url, BROKER_URL="memory://",
                           STORE_ROOT=str(tmp_path / "objects"),
                           VALIDATION_SOCKET=str(shared / "validator.sock"))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"rift: VALIDATION_SOCKET: the folder {shared} must belong to this user (uid "
        f"{os.getuid()}) and be writable by no one else (it is uid {os.getuid()}, mode 777)"]


def test_the_app_refuses_a_validation_socket_folder_with_one_line(sqlite_url: str,
                                                                  tmp_path: Path) -> None:
    # `uvicorn --factory api.main:create_app` without the preflight: was a ValueError traceback.
    (tmp_path / "run").write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(PYTHONPATH=str(ROOT), LOG_FORMAT="text", DATABASE_URL=sqlite_url,
               BROKER_URL="memory://", STORE_ROOT=str(tmp_path / "objects"),
               VALIDATION_SOCKET=str(tmp_path / "run" / "validator.sock"))
    result = subprocess.run([sys.executable, "-c", "from api.main import create_app; create_app()"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1:] == [
        f"rift: VALIDATION_SOCKET: cannot make the folder {tmp_path / 'run'}: File exists"]
    assert "Traceback" not in result.stderr


@pytest.fixture
def s3_checking_keys(tmp_path: Path) -> Iterator[str]:
    """A moto S3 server of its own that checks access keys (``INITIAL_NO_AUTH_ACTION_COUNT=0``:
    only IAM users' keys pass), as a real S3 does; the session's server accepts any key."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    log = tmp_path / "moto.log"
    servers: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> str:
        with log.open("wb") as out:
            server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                       "-p", str(port)], env=env, stdout=out,
                                      stderr=subprocess.STDOUT)
        servers.append(server)
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                if says_port_taken(log.read_text(errors="replace")):
                    raise PortTaken(f"moto: port {port} is taken")
                pytest.fail(f"moto's server exited:\n{log.read_text(errors='replace')[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return f"http://127.0.0.1:{port}"
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("moto's server did not start")
                time.sleep(0.1)

    try:
        yield on_a_free_port(start)  # a fresh port if another process took the first
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)


def test_s3_keys_refused_stop_the_start(sqlite_url: str, s3_checking_keys: str,
                                        tmp_path: Path) -> None:
    result = run_preflight(tmp_path, DATABASE_URL=sqlite_url, BROKER_URL="memory://",
                           STORE_KIND="s3", S3_BUCKET="rift", S3_ENDPOINT_URL=s3_checking_keys,
                           S3_ACCESS_KEY="AKIANOTKNOWN", S3_SECRET_KEY="not-the-secret")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"rift: object store: access to bucket 'rift' at {s3_checking_keys} was denied (403); "
        "check S3_ACCESS_KEY and S3_SECRET_KEY"]


def test_a_work_dir_that_cannot_be_made_stops_the_start(sqlite_url: str, tmp_path: Path) -> None:
    # It was not checked: the API started, /readyz said ready, and every upload answered 500
    # (FileNotFoundError from spooling it under WORK_DIR/uploads).
    (tmp_path / "scratch").write_text("not a folder")
    result = run_preflight(tmp_path, DATABASE_URL=sqlite_url, BROKER_URL="memory://",
                           STORE_ROOT=str(tmp_path / "objects"),
                           WORK_DIR=str(tmp_path / "scratch" / "work"))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"rift: WORK_DIR: {str(tmp_path / 'scratch' / 'work')!r} is not a writable folder "
        "(ENOTDIR: Not a directory); set WORK_DIR to a folder this user may write"]


def no_aws_credentials(cwd: Path) -> dict[str, str]:
    """Variables that leave boto3's chain empty: no keys, no files, no instance role."""
    return {"AWS_SHARED_CREDENTIALS_FILE": str(cwd / "no-credentials"),
            "AWS_CONFIG_FILE": str(cwd / "no-config"), "AWS_EC2_METADATA_DISABLED": "true"}


def test_s3_with_no_credentials_stops_the_start(sqlite_url: str, moto_s3_endpoint: str,
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # It was logged as "object store unreachable at start" and the process served, every
    # upload a 503 that sent the operator looking at the network.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)  # the child's env is built from os.environ
    result = run_preflight(tmp_path, DATABASE_URL=sqlite_url, BROKER_URL="memory://",
                           STORE_KIND="s3", S3_BUCKET="rift", S3_ENDPOINT_URL=moto_s3_endpoint,
                           **no_aws_credentials(tmp_path))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"rift: object store: no S3 credentials for bucket 'rift' at {moto_s3_endpoint} "
        "(Unable to locate credentials); set S3_ACCESS_KEY and S3_SECRET_KEY (or AWS's own "
        "variables, profile or instance role)"]


def test_an_unknown_access_key_names_s3_access_key(s3_checking_keys: str) -> None:
    # A request that carries the error code (a HEAD's 403 has none) says which key is wrong.
    from persistence.storage import StoreMisconfigured
    from persistence.storage_s3 import S3ObjectStore

    store = S3ObjectStore("rift", endpoint_url=s3_checking_keys, access_key="AKIANOTKNOWN",
                          secret_key="not-the-secret", max_attempts=1)
    with pytest.raises(StoreMisconfigured) as refused:
        store.put_bytes("probe", b"x")
    assert str(refused.value) == (
        f"access to bucket 'rift' at {s3_checking_keys} was denied (InvalidAccessKeyId); the "
        "server does not know S3_ACCESS_KEY")
