"""Pytest plugin with fixtures for the service: real Postgres, Redis and Celery worker processes.

Registered in ``tests/conftest.py`` with ``pytest_plugins = ["tests.service_fixtures"]``.

- ``postgres_url``: a fresh, migrated Postgres database for one test (cloned from a template that
  the migrations built once per session; afterwards emptied for a later test when its schema is
  still a fresh clone's, else dropped). ``postgres_session_url``: one
  migrated database shared by the whole session.
- ``sqlite_url``: a fresh, migrated SQLite file for one test (a copy of a file migrated once per
  session).
- ``redis_broker_url``: Redis on a dedicated db number; ``celery_queue``: a queue name unique to
  the test (its keys are deleted afterwards).
- ``service_env`` / ``service_settings``: the environment (and the Settings built from it) for a
  test's API and workers: Postgres, Redis, a local object store in tmp_path, short leases.
- ``start_worker``: starts a real ``celery worker`` process with the test's environment (plus
  overrides) and waits until it is ready; every worker it started is killed at teardown.
  ``celery_worker``: one such worker.

Postgres at 127.0.0.1:5432 (user ``postgres``, trust auth) and Redis at 127.0.0.1:6379 are
expected; ``RIFT_TEST_POSTGRES_ADMIN_URL`` and ``RIFT_TEST_REDIS_URL`` point elsewhere. Tests that
need them are skipped with the reason when they cannot be reached.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from persistence.migrate import upgrade_database
from persistence.settings import Settings
from tests.database_recycling import (
    others_connected,
    reusable,
    schema_fingerprint,
    truncate_database,
)
from tests.ports import PortTaken, on_a_free_port
from tests.preloaded_launcher import ForkedProcess, Launcher

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: This checkout's Python client (``rift_client``, ``riftctl``), first on the path of what the
#: tests run, as pyproject's pytest ``pythonpath`` puts it for the tests themselves.
CLIENT_SOURCE = PROJECT_ROOT / "clients" / "python"
POSTGRES_ADMIN_URL = os.environ.get("RIFT_TEST_POSTGRES_ADMIN_URL",
                                    "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("RIFT_TEST_REDIS_URL", "redis://127.0.0.1:6379")
#: Redis database number reserved for the tests' brokers (0 is left to whoever else uses Redis).
REDIS_TEST_DB = int(os.environ.get("RIFT_TEST_REDIS_DB", "11"))
WORKER_READY_TIMEOUT_S = 120.0


# --------------------------------------------------------------------------------------------
# Postgres and SQLite
# --------------------------------------------------------------------------------------------
def _admin_connection():  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)


#: libpq's ``options`` of the tests' service connections: a commit does not wait for its WAL
#: to reach the disk (3.3 ms a commit here, 0.22 ms without the wait; the API, the workers and
#: the tests commit tens of thousands of times). What others see of a commit, and when, is
#: unchanged; only a crash of the Postgres server itself could lose the last commits, which no
#: test does. (``-cNAME=VALUE``, no space: SQLAlchemy writes a space as ``+``, which a libpq
#: URI would keep.)
TEST_CONNECTION_OPTIONS = "-csynchronous_commit=off"


def _database_url(name: str) -> str:
    from sqlalchemy import make_url

    url = make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
    url = url.update_query_dict({"options": TEST_CONNECTION_OPTIONS})
    return url.render_as_string(hide_password=False)


def _drop_database(name: str) -> None:
    with _admin_connection() as connection:
        # FORCE: a worker process killed mid-test may leave a connection behind.
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def _postgres_template() -> Iterator[str]:
    """A database migrated once per session; never connected to afterwards, so it can be cloned."""
    try:
        with _admin_connection():
            pass
    except Exception as exc:  # psycopg.OperationalError and friends
        pytest.skip(f"Postgres is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    name = f"rift_test_{uuid.uuid4().hex[:12]}_template"
    with _admin_connection() as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        upgrade_database(_database_url(name))
        yield name
    finally:
        _drop_database(name)


@contextlib.contextmanager
def migrated_database(template: str, prefix: str = "rift_test") -> Iterator[str]:
    """A new database cloned from the migrated ``template``; yields its URL, drops it after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with _admin_connection() as connection:
        connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield _database_url(name)
    finally:
        _drop_database(name)


@contextlib.contextmanager
def empty_database(prefix: str = "rift_test", options: str = "") -> Iterator[str]:
    """A new Postgres database with no schema (for the migrations themselves), made with the
    CREATE DATABASE ``options`` (a collation); yields its URL, drops it after. Skips the test
    when Postgres cannot be reached."""
    try:
        with _admin_connection():
            pass
    except Exception as exc:  # psycopg.OperationalError and friends
        pytest.skip(f"Postgres is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with _admin_connection() as connection:
        connection.execute(f'CREATE DATABASE "{name}" {options}')
    try:
        yield _database_url(name)
    finally:
        _drop_database(name)


def _conninfo(name: str) -> str:
    """psycopg's connection string of database ``name`` on the tests' server."""
    from sqlalchemy import make_url

    url = make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql", database=name)
    url = url.update_query_dict({"options": TEST_CONNECTION_OPTIONS})
    return url.render_as_string(hide_password=False)


class DatabasePool:
    """Clones of the migrated template made ahead of need, emptied for the next test or dropped
    behind, by one thread.

    Cloning a database and dropping one each cost Postgres up to a second on a quiet machine
    (1-3 s loaded: files written and synced, and a DROP forces a checkpoint), which a test would
    otherwise wait for before it starts and after it ends; the thread does that while tests
    run. A test's database given back is emptied and handed to a later test when it is
    indistinguishable from a fresh clone (``tests/database_recycling.py``), else dropped. Each
    database serves one test at a time."""

    def __init__(self, template: str, prefix: str = "rift_test", ready: int = 2) -> None:
        self._template = template
        self._prefix = prefix
        self._wanted = ready
        self._ready: queue.Queue[str] = queue.Queue()
        self._returned: queue.Queue[str] = queue.Queue()
        self._to_drop: queue.Queue[str] = queue.Queue()
        #: The schema of a fresh clone (taken from the first one), which a database given back
        #: must still have to be handed out again.
        self._fingerprint: tuple[Any, ...] | None = None
        self.recycled = 0
        #: Databases taken and not given back yet (dropped by close()).
        self._out: set[str] = set()
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="database-pool", daemon=True)
        self._thread.start()

    def take(self, timeout: float = 120.0) -> str:
        """The name of a fresh clone (or of one emptied back to a fresh clone's state), for
        one test."""
        try:
            name = self._ready.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"no database clone within {timeout} s: {self._error!r}") from None
        self._out.add(name)
        return name

    def give_back(self, name: str) -> None:
        """Empty the test's database for another test, or drop it, later."""
        self._out.discard(name)
        self._returned.put(name)

    def _clone(self) -> str:
        name = f"{self._prefix}_{uuid.uuid4().hex[:12]}"
        with _admin_connection() as connection:
            connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"')
        if self._fingerprint is None:
            import psycopg

            with psycopg.connect(_conninfo(name)) as connection:
                self._fingerprint = schema_fingerprint(connection)
        return name

    def _recycle(self, name: str) -> bool:
        """Empty database ``name`` when it can pass for a fresh clone; False if it cannot."""
        import psycopg

        if self._fingerprint is None:
            return False
        with _admin_connection() as admin:
            if not reusable(admin, name):
                return False
        with psycopg.connect(_conninfo(name)) as connection:
            if schema_fingerprint(connection) != self._fingerprint:
                return False
            truncate_database(connection)
        with _admin_connection() as admin:  # nobody came in meanwhile
            return others_connected(admin, name) == 0

    def _run(self) -> None:
        while not self._stopping.is_set():
            name = None
            try:
                if self._ready.qsize() < self._wanted and not self._returned.empty():
                    name = self._returned.get()
                    if self._recycle(name):
                        self._ready.put(name)
                        self.recycled += 1
                    else:
                        self._to_drop.put(name)
                elif self._ready.qsize() < self._wanted:
                    self._ready.put(self._clone())
                elif not self._to_drop.empty():
                    _drop_database(self._to_drop.get())
                else:
                    time.sleep(0.02)
            except Exception as exc:  # Postgres busy or gone: say so in take()'s error, retry
                self._error = exc
                if name is not None:  # half emptied, perhaps: not for another test
                    self._to_drop.put(name)
                time.sleep(0.5)

    def close(self) -> None:
        """Stop the thread and drop every database left: ready, given back, to drop, or still
        taken."""
        self._stopping.set()
        self._thread.join(timeout=60)
        names = sorted(self._out)
        for pending in (self._ready, self._returned, self._to_drop):
            while not pending.empty():
                names.append(pending.get())
        # Together: one after the other, each DROP waited for its own checkpoint (1-3 s loaded),
        # 5-20 s at the end of every test process, the suite's last minute among them.
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as drops:
            list(drops.map(_drop_database, names))
        self._out.clear()


@pytest.fixture(scope="session")
def _database_pool(_postgres_template: str) -> Iterator[DatabasePool]:
    pool = DatabasePool(_postgres_template)
    yield pool
    pool.close()


@pytest.fixture
def postgres_url(_database_pool: DatabasePool) -> Iterator[str]:
    """URL (``postgresql+psycopg://``) of a fresh migrated database, for this test alone (emptied
    for a later one or dropped afterwards: ``DatabasePool``)."""
    name = _database_pool.take()
    try:
        yield _database_url(name)
    finally:
        _database_pool.give_back(name)


@pytest.fixture(scope="session")
def postgres_session_url(_postgres_template: str) -> Iterator[str]:
    """URL of one migrated database shared by every test of the session."""
    with migrated_database(_postgres_template, "rift_session") as url:
        yield url


@pytest.fixture(scope="session")
def moto_s3_endpoint() -> Iterator[str]:
    """URL of moto's standalone S3 server on 127.0.0.1 (a port the OS picked): a real HTTP
    server that test processes and worker processes alike talk to."""
    server_module = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per test process, copied for each test that wants one.

    Running the migrations costs 0.27-0.34 CPU s a file here (1.5-5 s of wall time on the loaded
    2-core machine: one synced commit per revision), and some 400 tests take a fresh file; a
    copy costs milliseconds and has the same schema and ``alembic_version``."""
    path = tmp_path_factory.mktemp("sqlite-template") / "rift.db"
    upgrade_database(f"sqlite:///{path}")
    return path


def copy_sqlite_database(source: Path, target: Path) -> None:
    """Copy the database ``source`` to a new file ``target`` through SQLite's backup API (whole
    and consistent, whatever its journal mode; a plain file copy could miss a WAL file)."""
    with contextlib.closing(sqlite3.connect(source)) as origin, \
            contextlib.closing(sqlite3.connect(target)) as copy:
        origin.backup(copy)


@pytest.fixture
def sqlite_url(tmp_path: Path, _sqlite_template: Path) -> str:
    """URL of a fresh migrated SQLite database file in the test's tmp_path (a copy of the
    session's migrated template)."""
    path = tmp_path / "rift.db"
    copy_sqlite_database(_sqlite_template, path)
    return f"sqlite:///{path}"


# --------------------------------------------------------------------------------------------
# Redis and queues
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_broker_url() -> str:
    """``redis://…/<REDIS_TEST_DB>``: the broker URL for the tests' Celery apps and workers."""
    import redis

    url = f"{REDIS_URL.rstrip('/')}/{REDIS_TEST_DB}"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=5).ping()
    except Exception as exc:
        pytest.skip(f"Redis is not reachable at {url}: {exc}")
    return url


@pytest.fixture
def celery_queue(redis_broker_url: str) -> Iterator[str]:
    """A queue name no other test uses; its Redis keys are removed after the test."""
    name = f"rift-test-{uuid.uuid4().hex[:12]}"
    yield name
    forget_queue(redis_broker_url, name)


def forget_queue(redis_broker_url: str, name: str) -> None:
    """Remove the Redis keys of queue ``name``, and its messages that a killed worker left
    unacknowledged."""
    import redis

    client = redis.Redis.from_url(redis_broker_url)
    keys = list(client.scan_iter(match=f"*{name}*"))
    if keys:
        client.delete(*keys)
    # Messages a killed worker never acknowledged wait in kombu's shared 'unacked' hash, to be
    # restored after the visibility timeout; drop those of this queue.
    for tag, entry in client.hgetall("unacked").items():
        try:
            routing_key = json.loads(entry)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if routing_key == name:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)


# --------------------------------------------------------------------------------------------
# Environment, settings and workers
# --------------------------------------------------------------------------------------------
@pytest.fixture
def service_env(postgres_url: str, redis_broker_url: str, celery_queue: str,
                tmp_path: Path) -> dict[str, str]:
    """Environment variables of the test's service processes (Settings reads these names)."""
    return service_environment(postgres_url, redis_broker_url, celery_queue, tmp_path)


def service_environment(database_url: str, broker_url: str, queue: str, root: Path
                        ) -> dict[str, str]:
    """The service's environment for a test: this database, broker and queue, the object store
    and work folders under ``root``, and short leases and intervals."""
    return {
        "DATABASE_URL": database_url,
        "BROKER_URL": broker_url,
        "CELERY_QUEUE": queue,
        "STORE_KIND": "local",
        "STORE_ROOT": str(root / "objects"),
        "WORK_DIR": str(root / "work"),
        # Short leases so that a killed worker's stage is taken over within seconds.
        "WORKER_LEASE_SECONDS": "4",
        "WORKER_RECOVERY_INTERVAL_SECONDS": "1",
        "PROGRESS_INTERVAL_SECONDS": "0.2",
        "STAGE_RETRY_DELAY_SECONDS": "0.2",
        "MAX_STAGE_ATTEMPTS": "3",
        "WORKER_DEVICE": "cpu",
    }


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Settings built from ``env`` alone (the test process's own environment is not read)."""
    known = set(Settings.model_fields)
    return Settings(**{k.lower(): v for k, v in env.items() if k.lower() in known})  # type: ignore[arg-type]


@pytest.fixture
def service_settings(service_env: dict[str, str]) -> Settings:
    """The Settings of ``service_env``, for the test's own database, store and Celery app."""
    return settings_from_env(service_env)


class WorkerProcess:
    """A ``celery worker`` process (started by ``subprocess`` or forked by the launcher); its
    output goes to ``log_path``."""

    def __init__(self, process: subprocess.Popen[bytes] | ForkedProcess, log_path: Path,
                 name: str) -> None:
        self.process = process
        self.log_path = log_path
        self.name = name

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = WORKER_READY_TIMEOUT_S) -> None:
        """Block until the worker logs that it is ready; fail with its log if it exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.process.returncode}:\n"
                                   f"{self.log()[-4000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"worker {self.name} not ready after {timeout} s:\n{self.log()[-4000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL: no cleanup, no acknowledgement) and reap the process."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def discard(self) -> None:
        """End the worker once its test is over: SIGKILL to its process group (it leads a
        session of its own, forked or started) and reap it. Nothing of the worker is checked
        after its test; its polite stop (SIGTERM, Celery's warm shutdown) cost 1.07 s even for an
        idle worker, at the teardown of every worker the suite starts (SIGKILL: 0.05 s). What a
        killed worker leaves behind, as a crashed one would (unacknowledged messages, a closed
        database connection), the queue and database fixtures clean up after it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop politely (SIGTERM: warm shutdown), then forcefully."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def _celery_command() -> list[str]:
    celery = Path(sys.executable).with_name("celery")
    return [str(celery)] if celery.exists() else [sys.executable, "-m", "celery"]


def launch_worker(env: Mapping[str, str], log_path: Path, name: str,
                  launcher: Launcher | None = None, pool: str = "solo",
                  module: str | None = None) -> WorkerProcess:
    """Start a real ``celery worker`` (solo pool unless ``pool`` says otherwise, one task at a
    time) consuming ``env["CELERY_QUEUE"]``, with ``env`` over this process's environment; its
    output goes to ``log_path``. Call ``wait_ready()`` on the result. With a ``launcher`` the
    worker is forked from it (the same command line, without paying the imports again). With
    ``module``, Celery's command line is run by ``python -m module`` (which must end by running
    it: ``tests/clock_skew.py``)."""
    full = {**os.environ, **env}
    # Two cores are shared by the test and its workers: no thread oversubscription.
    full.setdefault("OMP_NUM_THREADS", "1")
    arguments = ["-A", "worker.celery_app", "worker", f"--pool={pool}",
                 "--concurrency=1", "-Q", full.get("CELERY_QUEUE", "rift"), "--without-gossip",
                 "--without-mingle", "--without-heartbeat", "--loglevel=INFO", "-n", f"{name}@%h"]
    if launcher is not None:
        forked = launcher.spawn([module or "celery", *arguments], full, PROJECT_ROOT, log_path,
                                module=module)
        return WorkerProcess(forked, log_path, name)
    command = [*([sys.executable, "-m", module] if module else _celery_command()), *arguments]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=full, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return WorkerProcess(process, log_path, name)


@pytest.fixture(scope="session")
def worker_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """This test process's launcher of worker processes (see ``tests/preloaded_launcher.py``);
    ``RIFT_TEST_FORK_WORKERS=0`` starts every worker with a fresh interpreter instead."""
    launcher = Launcher(tmp_path_factory.mktemp("launcher"), PROJECT_ROOT)
    yield launcher
    launcher.close()


@pytest.fixture(scope="session")
def optional_worker_launcher(request: pytest.FixtureRequest) -> Launcher | None:
    """The launcher, or None when ``RIFT_TEST_FORK_WORKERS=0``."""
    if os.environ.get("RIFT_TEST_FORK_WORKERS", "1") == "0":
        return None
    launcher: Launcher = request.getfixturevalue("worker_launcher")
    return launcher


@pytest.fixture(scope="session")
def api_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """This test process's launcher of API-side processes (uvicorn, ``riftctl``): the API stack
    and this checkout's ``rift_client`` imported once, torch never (see
    ``tests/preloaded_launcher.py``)."""
    launcher = Launcher(tmp_path_factory.mktemp("api-launcher"), PROJECT_ROOT, preload="api",
                        python_path=(CLIENT_SOURCE,))
    yield launcher
    launcher.close()


@pytest.fixture(scope="session")
def optional_api_launcher(request: pytest.FixtureRequest) -> Launcher | None:
    """The API launcher, or None when ``RIFT_TEST_FORK_API=0`` (a fresh interpreter each)."""
    if os.environ.get("RIFT_TEST_FORK_API", "1") == "0":
        return None
    launcher: Launcher = request.getfixturevalue("api_launcher")
    return launcher


@pytest.fixture
def start_worker(service_env: dict[str, str], tmp_path: Path,
                 optional_worker_launcher: Launcher | None
                 ) -> Iterator[Callable[..., WorkerProcess]]:
    """``start_worker(wait=True, pool="solo", module=None, **env_overrides) -> WorkerProcess``:
    a real Celery worker (one task at a time) consuming the test's queue, started and ready
    (``module``: see :func:`launch_worker`). All are killed at teardown
    (``WorkerProcess.discard``)."""
    started: list[WorkerProcess] = []

    def start(wait: bool = True, pool: str = "solo", module: str | None = None,
              **overrides: str) -> WorkerProcess:
        name = f"w{len(started) + 1}-{uuid.uuid4().hex[:6]}"
        worker = launch_worker({**service_env, **overrides}, tmp_path / f"worker-{name}.log", name,
                               optional_worker_launcher, pool, module)
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.discard()


def start_worker_serving_metrics(start_worker: Callable[..., WorkerProcess],
                                 **overrides: str) -> tuple[WorkerProcess, int]:
    """``start_worker(**overrides)`` with WORKER_METRICS_PORT set, once the worker serves its
    metrics there: (the worker, the port). A worker whose port was taken before it bound it
    (it logs so and serves none) is stopped and another started on a fresh port; before, the
    test scraped nothing, or another process's metrics."""
    def start(port: int) -> tuple[WorkerProcess, int]:
        worker = start_worker(WORKER_METRICS_PORT=str(port), **overrides)
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while f"worker metrics served on port {port}" not in worker.log():
            if f"port {port} is not free" in worker.log():
                worker.stop()
                raise PortTaken(f"worker metrics: port {port} is taken")
            assert worker.process.poll() is None, worker.log()[-3000:]
            assert time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(0.1)
        return worker, port

    return on_a_free_port(start)


@pytest.fixture
def celery_worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """One ready worker on the test's queue, database and store."""
    return start_worker()
