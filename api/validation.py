"""Running checks in sandboxed validator processes (the ``validator`` package), so that the API
process never imports torch nor holds an upload's tensors.

A validator server (``python -m validator``) runs with an environment reduced to an allow-list
(no database URL, broker URL, S3 keys or any other credential); it imports torch once and serves
each check in a forked child that caps its own memory, CPU time and wall-clock time once it has
read its request, before any work (``validator/limits.py``); the child was forked and warmed up
before the request came (a spare: ``validator/check_pool.py``), so a check costs neither a torch
import nor a fork. The server runs at most ``validation_max_concurrency`` checks at once; the
others wait up to ``validation_queue_timeout_seconds``, then are answered 503. Each child's
memory high-water mark is logged with its check. Calls block: run them in a thread.

By default each API process starts a private server. With ``validation_socket`` set, the API
processes of a host share one server at that path, started by the first that needs it (one at a
time, under a file lock): one torch import and one concurrency bound for the host, however many
``uvicorn`` workers there are. The API starts (or finds) its server at start-up, in the
background (:meth:`Validator.start`; ``validation_warm_start``), so the first upload does not
pay torch's import; a check that comes while the server starts waits for it, as for a slot.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from api.errors import InvalidInput, ServiceUnavailable
from persistence.settings import Settings
from rift.config import RiftConfig
from validator.checkpoint import CheckpointInspection
from validator.dataset import DatasetInspection
from validator.fit import FitAnswer
from validator.protocol import decode_error
from validator.server_lock import server_alive, starting_server

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: The only variables the child inherits: locale and search paths, nothing that holds a secret.
INHERITED_VARIABLES = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
#: One thread for torch and the BLAS libraries: a check is I/O bound and must not take the cores.
CHILD_VARIABLES = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                   "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}
#: Seconds the client waits beyond the child's own wall-clock alarm before giving up on it.
_GRACE_SECONDS = 5.0
#: Tries at reaching a shared server, which may be stopping (idle) just as a check arrives.
_SHARED_CONNECT_TRIES = 3
#: How often a process waits on a shared server another process started (seconds).
_SHARED_START_POLL_SECONDS = 0.05
#: sockaddr_un's sun_path on Linux, its terminating zero included.
_MAX_SOCKET_PATH_BYTES = 108
_READ_BYTES = 1024 * 1024
#: How long closing waits for a private server stopped mid-start to exit (it needs well under a
#: second: its watcher polls its folder every 0.2 s).
_CLOSE_WAIT_SECONDS = 10.0


def fit_check_key(config: RiftConfig, request: Mapping[str, Any]) -> str:
    """What a fit check reads (``validator/fit.py``: the architecture, the MRC module selection,
    the fine-tuned module, the checkpoint's shapes, dtypes, normaliser values and value digests,
    the data's geometry), as a digest:
    jobs that differ elsewhere (learning rate, epochs, attack, seed) get the same answer. A fit
    check that reads more of the config must add it here. A pass remembered across a change of
    the validator's code (a new architecture plug-in, a shared server restarted) only moves a
    failure from the 422 to the job's first stage, which checks the real model again."""
    document = {"architecture": config.architecture.model_dump(mode="json"),
                "mrc": config.mrc.model_dump(mode="json"), "module": config.finetune.module,
                **{name: request[name] for name in ("shapes", "dtypes", "in_channels",
                                                   "image_size", "num_features",
                                                   "image_width")},
                "normalizers": request.get("normalizers") or {},
                "digests": request.get("digests") or {}}
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def child_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The validator's environment: the allow-listed variables of ``parent`` and fixed ones."""
    env = {name: parent[name] for name in INHERITED_VARIABLES if name in parent}
    env.update(CHILD_VARIABLES)
    # The project first, then the operator's own path: architectures added through the
    # 'rift.architectures' entry points must be found here as they are on the workers.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PROJECT_ROOT), *([parent["PYTHONPATH"]] if parent.get("PYTHONPATH") else [])])
    return env


class ServerProcess(Protocol):
    """What the client needs of a validator server's process (``subprocess.Popen`` has it)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


#: How a validator server is started: ``launch(args, env, cwd)`` runs ``python -m validator
#: ARGS`` with the environment ``env`` in ``cwd``, in a session of its own, and returns its
#: process and the first line it printed on its stdout, stripped (``b""`` if it ended first);
#: nothing more is read from that stdout. The default is :func:`launch_subprocess`; tests fork
#: the server from a process that has imported torch already.
ServerLauncher = Callable[[Sequence[str], Mapping[str, str], Path], tuple[ServerProcess, bytes]]

#: A validator server's state, as this API process sees it (:meth:`Validator.state`).
ValidatorState = Literal["stopped", "starting", "ready", "failed"]


def launch_subprocess(args: Sequence[str], env: Mapping[str, str],
                      cwd: Path) -> tuple[ServerProcess, bytes]:
    """Start ``python -m validator ARGS`` as a fresh interpreter (see :data:`ServerLauncher`)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "validator", *args], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, env=dict(env), cwd=cwd, start_new_session=True)
    assert server.stdout is not None
    with server.stdout:
        announced = server.stdout.readline().strip()
    return server, announced


class _Start:
    """One start of a validator server, run by a thread of its own; checks wait on ``done``."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: ServiceUnavailable | None = None
        #: Set by :meth:`Validator.close` while it runs: the server it starts is stopped at once.
        self.cancelled = False
        #: A private server's folder, once made: removing it stops the server mid-start.
        self.folder: Path | None = None


class Validator:
    """Runs checks in validator processes, within the limits of ``settings``; ``launch`` starts
    a server (default: a fresh interpreter).

    Raises:
        ValueError: ``validation_socket`` is too long for a Unix socket, or its folder is open
            to other users.
    """

    def __init__(self, settings: Settings, *,
                 launch: ServerLauncher = launch_subprocess) -> None:
        self._settings = settings
        self._launch_server = launch
        # Guards the fields below it; never held while a server starts.
        self._lock = threading.Lock()
        self._server: ServerProcess | None = None
        self._folder: Path | None = None
        self._start: _Start | None = None
        # Keys of the fit checks that passed (see fit_check_key), least recently used first,
        # with the model's forward FLOPs per example the check counted (the key holds all the
        # count depends on: the architecture and the geometry).
        self._passed_fits: OrderedDict[str, float | None] = OrderedDict()
        self._fits_lock = threading.Lock()
        self._shared_socket = Path(settings.validation_socket) if settings.validation_socket else None
        if self._shared_socket is not None:
            require_socket_path(self._shared_socket)

    def start(self) -> None:
        """Start the server now, in the background, unless it runs or is starting already
        (with ``validation_socket``: find the host's, or start it): returns at once. The API
        calls it at start-up, so that the first upload need not wait for torch's import; a check
        that comes before the server is ready waits for it."""
        self._begin_start()

    def state(self) -> ValidatorState:
        """``ready`` (it serves checks), ``starting``, ``failed`` (the last start failed: the
        next check or :meth:`start` tries again) or ``stopped`` (never started, or gone: a
        shared server that exited idle, a private one that died; the next check starts one)."""
        with self._lock:
            start = self._start
            if start is not None and not start.done.is_set():
                return "starting"
            if self._serving():
                return "ready"
            if start is not None and start.error is not None:
                return "failed"
            return "stopped"

    def keep_started(self) -> ValidatorState:
        """The state, after starting the server again in the background where it should run and
        does not: after a failed start, or a private server that died. A shared server that
        exited idle is left stopped: that exit is what ``validation_idle_exit_seconds`` is for."""
        state = self.state()
        if not self._settings.validation_warm_start:
            return state
        if state == "failed" or (state == "stopped" and self._shared_socket is None
                                 and self._start is not None):
            self.start()
            return self.state()
        return state

    def wait_ready(self, timeout: float) -> ValidatorState:
        """Wait, at most ``timeout`` seconds, for a start in progress to end; the state then."""
        with self._lock:
            start = self._start
        if start is not None:
            start.done.wait(timeout)
        return self.state()

    def close(self) -> None:
        """Stop this process's private validator server (a later check starts a new one), even
        one that still starts: it is gone when this returns; a shared server serves other
        processes too and stops when idle."""
        with self._lock:
            start = self._start
            if start is not None and not start.done.is_set():
                start.cancelled = True
                if start.folder is not None:
                    # The starting server watches its folder and exits, its children with
                    # it, once the folder is gone (``validator/__main__.py``): stopped now,
                    # not after its torch import and warm-up.
                    shutil.rmtree(start.folder, ignore_errors=True)
            else:
                start = None
            self._stop_server()
        if start is not None and self._shared_socket is None:
            # The start's thread reaps the server; waiting for it here means nothing of the
            # server is left once the API has closed (a process exiting next would orphan it).
            start.done.wait(_CLOSE_WAIT_SECONDS)

    # -------------------------------------------------------------------------- operations

    def inspect_checkpoint(self, path: Path, display_name: str, entry: str | None = None, *,
                           digests: bool = False) -> CheckpointInspection:
        """Validate a checkpoint file completely (its weights entry ``entry``, if given, else
        every entry); ``digests``: with a PyTorch file's value digests (for job creation's fit
        check: ``CheckpointInspection.digests``).

        Raises:
            RiftError: (CheckpointError) the file is not an acceptable checkpoint;
                (CheckpointEntryError) ``entry`` is not one of its entries.
            ApiError: the check ran past a limit (422) or could not run (503).
        """
        request: dict[str, Any] = {"op": "checkpoint", "path": str(path),
                                   "display_name": display_name}
        if entry is not None:
            request["entry"] = entry
        if digests:
            request["digests"] = True
        result = self._run(request, extra_memory=path.stat().st_size)
        return CheckpointInspection.from_json(result)

    def inspect_dataset(self, path: Path, display_name: str,
                        max_unpacked_bytes: int) -> DatasetInspection:
        """Validate a dataset archive completely (layout and every value).

        Raises:
            RiftError: (DatasetError) the archive is not an acceptable dataset.
            ApiError: the check ran past a limit (422) or could not run (503).
        """
        result = self._run({"op": "dataset", "path": str(path), "display_name": display_name,
                            "max_unpacked_bytes": max_unpacked_bytes})
        return DatasetInspection.from_json(result)

    def check_fit(self, config: RiftConfig, shapes: Mapping[str, tuple[int, ...]], *,
                  in_channels: int | None, image_size: int | None,
                  num_features: int | None, image_width: int | None = None,
                  dtypes: Mapping[str, str] | None = None,
                  normalizers: Mapping[str, list[float]] | None = None,
                  digests: Mapping[str, str] | None = None, final: bool = False) -> FitAnswer:
        """Require the checkpoint of ``shapes`` (and ``dtypes``: key → torch dtype name, where
        known; ``normalizers``: the values of the tensors that may be an input normaliser's,
        which must equal what the model applies; ``digests``: of the values, where known) to
        fit ``config``'s architecture built for the dataset's geometry
        (``image_width`` None: square images), the model to take inputs of that geometry, and
        the spec's module names to exist in it.

        Returns:
            ``unknown_values``: the keys whose digests the answer needs (``validator/fit.py``: a
            network under one prefix that may or may not be a copy of the one under another):
            ask again with them. Empty: the checkpoint fits. With ``final`` (no more digests
            can be read), always empty: the values still unknown are taken as equal.
            ``example_flops``: the model's forward FLOPs on one input of the geometry (None:
            not counted). A pass is remembered with its count, an answer needing digests is
            not.

        Raises:
            RiftError: CheckpointMismatchError, ConfigError or UnknownArchitectureError.
            ApiError: the check ran past a limit (422) or could not run (503).
        """
        geometry = {"in_channels": in_channels, "image_size": image_size,
                    "num_features": num_features, "image_width": image_width}
        request = {"op": "fit", "config": config.model_dump(mode="json"),
                   "shapes": {key: list(shape) for key, shape in shapes.items()},
                   "dtypes": dict(dtypes or {}), "normalizers": dict(normalizers or {}),
                   "digests": dict(digests or {}), "final": final, **geometry}
        key = fit_check_key(config, request)
        size = self._settings.validation_fit_cache_size
        with self._fits_lock:
            if key in self._passed_fits:
                self._passed_fits.move_to_end(key)
                return FitAnswer([], self._passed_fits[key])
        result = self._run(request)
        unknown = [str(name) for name in result.get("unknown_values") or []]
        counted = result.get("example_flops")
        flops = float(counted) if isinstance(counted, int | float) and counted > 0 else None
        if size == 0 or unknown:
            return FitAnswer(unknown, flops)
        with self._fits_lock:
            self._passed_fits[key] = flops
            while len(self._passed_fits) > size:
                self._passed_fits.popitem(last=False)
        return FitAnswer([], flops)

    def probe(self, sleep_seconds: float = 0.0, *, allocate_bytes: int = 0,
              busy_seconds: float = 0.0) -> dict[str, Any]:
        """What a validator process sees: its environment variable names, its limits, its pid and
        its server's, and when it started and finished (``time.monotonic``) after sleeping
        ``sleep_seconds``, allocating ``allocate_bytes`` and spending ``busy_seconds`` of CPU
        time (the last two show the limits at work: see :meth:`_run` for their errors)."""
        return self._run({"op": "probe", "sleep_seconds": sleep_seconds,
                          "allocate_bytes": allocate_bytes, "busy_seconds": busy_seconds})

    # ----------------------------------------------------------------------------- running

    def _run(self, request: dict[str, Any], *, extra_memory: int = 0) -> dict[str, Any]:
        settings = self._settings
        limits = {"memory_bytes": settings.validation_memory_bytes + extra_memory,
                  "cpu_seconds": settings.validation_cpu_seconds,
                  "wall_seconds": settings.validation_timeout_seconds}
        started = time.monotonic()
        reply = self._exchange({**request, "limits": limits})
        peak = reply.get("peak_rss_kb", {})
        logger.info("validation %s: peak RSS %s kB (at start %s kB), %.2f s", request["op"],
                    peak.get("end"), peak.get("start"), time.monotonic() - started)
        if reply.get("ok"):
            result: dict[str, Any] = reply["result"]
            return result
        if "error" in reply:
            raise decode_error(reply["error"])
        if isinstance(reply.get("busy"), dict):
            busy = reply["busy"]
            raise ServiceUnavailable(
                f"all {busy.get('max_checks')} validation slots (VALIDATION_MAX_CONCURRENCY) "
                f"stayed busy for {float(busy.get('waited_seconds', 0)):g} s; retry later",
                code="validation_busy")
        if reply.get("memory"):
            raise InvalidInput(
                f"checking the file needed more memory than the validation limit of "
                f"{limits['memory_bytes']} bytes (VALIDATION_MEMORY_BYTES)",
                field="VALIDATION_MEMORY_BYTES", code="validation_limit",
                details={"limit_bytes": limits["memory_bytes"]})
        logger.error("validation %s failed inside the validator: %s", request["op"],
                     reply.get("internal"))
        raise ServiceUnavailable("the validator failed unexpectedly; retry later",
                                 code="validation_failed")

    def _exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send ``request`` to a forked child of the server and read its reply."""
        settings = self._settings
        # A check may wait for a slot, then run until its own alarm.
        wait = (settings.validation_queue_timeout_seconds + settings.validation_timeout_seconds
                + _GRACE_SECONDS)
        with self._connect() as connection:
            connection.settimeout(wait)
            parts = []
            try:
                connection.sendall(json.dumps(request).encode())
                connection.shutdown(socket.SHUT_WR)
                while chunk := connection.recv(_READ_BYTES):
                    parts.append(chunk)
            except TimeoutError:
                parts = []
            except OSError as exc:
                logger.error("the validator connection failed: %s", exc)
                raise ServiceUnavailable("the validator is not available; retry later",
                                         code="validation_failed") from exc
        try:
            reply = json.loads(b"".join(parts)) if parts else None
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            # The child ended without a reply: its CPU or wall-clock limit killed it.
            raise InvalidInput(
                "checking the file ran past the validation limits "
                f"({settings.validation_cpu_seconds} CPU seconds, "
                f"{settings.validation_timeout_seconds:g} s; VALIDATION_CPU_SECONDS, "
                "VALIDATION_TIMEOUT_SECONDS)", field="VALIDATION_CPU_SECONDS",
                code="validation_limit",
                details={"limit_cpu_seconds": settings.validation_cpu_seconds,
                         "limit_seconds": settings.validation_timeout_seconds})
        return reply

    def _connect(self) -> socket.socket:
        """A connection to a running validator server, started (or restarted) when needed."""
        tries = _SHARED_CONNECT_TRIES if self._shared_socket is not None else 1
        for attempt in range(1, tries + 1):
            path = self._serving_socket()
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                connection.connect(str(path))
                return connection
            except OSError as exc:
                connection.close()
                # A shared server that went idle removes its socket just before it stops
                # serving: the next try finds it gone and starts another.
                if attempt == tries or not isinstance(
                        exc, FileNotFoundError | ConnectionRefusedError):
                    logger.error("cannot reach the validator server at %s: %s", path, exc)
                    raise ServiceUnavailable("the validator is not available; retry later",
                                             code="validation_failed") from exc
        raise AssertionError("unreachable")

    def _serving_socket(self) -> Path:
        """The socket of a server that serves checks: started here (or its start joined) when
        none does. A check waits for a start as it would for a slot, at most
        ``validation_queue_timeout_seconds``.

        Raises:
            ApiError: (503) the server did not start, or not in time.
        """
        start = self._begin_start()
        if start is not None:
            waited = self._settings.validation_queue_timeout_seconds
            if not start.done.wait(waited):
                raise ServiceUnavailable(
                    f"the validator was still starting after {waited:g} s "
                    "(VALIDATION_QUEUE_TIMEOUT_SECONDS); retry later", code="validation_busy")
            if start.error is not None:
                raise start.error
        with self._lock:
            if self._shared_socket is not None:
                return self._shared_socket
            if self._folder is None:  # closed while it started
                raise ServiceUnavailable("the validator is not available; retry later",
                                         code="validation_failed")
            return self._folder / "socket"

    def _serving(self) -> bool:
        """Whether a server serves checks now (under ``_lock``)."""
        if self._shared_socket is not None:
            return server_alive(self._shared_socket) and self._shared_socket.exists()
        return self._server is not None and self._server.poll() is None and self._folder is not None

    def _begin_start(self) -> _Start | None:
        """None when a server serves checks; else the start in progress, begun here if none
        was (a thread of its own runs it)."""
        with self._lock:
            if self._start is not None and not self._start.done.is_set():
                return self._start
            if self._serving():
                return None
            if self._shared_socket is None:
                self._stop_server()  # a dead server's folder, if any
            start = self._start = _Start()
        threading.Thread(target=self._run_start, args=(start,), name="validator-start",
                         daemon=True).start()
        return start

    def _run_start(self, start: _Start) -> None:
        began = time.monotonic()
        try:
            if self._shared_socket is not None:
                self._start_shared(self._shared_socket)
            else:
                self._start_private(start)
            logger.info("validator server ready in %.1f s", time.monotonic() - began)
        except ServiceUnavailable as exc:
            start.error = exc
        except Exception as exc:  # a thread's error would otherwise go nowhere
            logger.exception("the validator server did not start")
            start.error = ServiceUnavailable("the validator did not start; retry later",
                                             code="validation_failed")
            start.error.__cause__ = exc
        finally:
            start.done.set()

    def _start_private(self, start: _Start) -> None:
        """Start this process's server in a fresh 0700 folder."""
        folder = Path(tempfile.mkdtemp(prefix="rift-validator-"))  # mode 0700
        with self._lock:
            if start.cancelled:
                shutil.rmtree(folder, ignore_errors=True)
                raise ServiceUnavailable("the validator is not available; retry later",
                                         code="validation_failed")
            start.folder = folder
        try:
            # It exits as soon as this process has ended, even killed, or has removed its
            # folder (close() while it starts).
            server = self._launch(folder / "socket", "--owner-pid", str(os.getpid()),
                                  start=start)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        with self._lock:
            if not start.cancelled:
                self._server, self._folder = server, folder
                return
        # Closed while it started: nothing may keep it.
        _stop_process(server)
        shutil.rmtree(folder, ignore_errors=True)

    def _start_shared(self, path: Path) -> None:
        """Find the host's shared server, or start it (one process at a time).

        Another process's server may hold the lock while it still starts: its starter can have
        died before the server said ready (an API process killed during its warm start), and the
        server goes on alone, holding the lock before it listens. Wait until it listens (it binds
        its socket and listens at once; a probe connection would cost it a check's child), or
        start one when it exits first.

        Raises:
            ApiError: (503) no server listened within ``validation_queue_timeout_seconds``.
        """
        waited = self._settings.validation_queue_timeout_seconds
        deadline = time.monotonic() + waited
        while True:
            with starting_server(path):
                if not server_alive(path):
                    # This process only starts it: the server detaches and outlives it.
                    self._launch(path, "--shared", "--idle-exit",
                                 str(self._settings.validation_idle_exit_seconds)).wait()
                    return
            if path.exists():
                return
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(
                    f"the shared validator server was still starting after {waited:g} s "
                    "(VALIDATION_QUEUE_TIMEOUT_SECONDS); retry later", code="validation_busy")
            time.sleep(_SHARED_START_POLL_SECONDS)

    def _launch(self, path: Path, *options: str, start: _Start | None = None) -> ServerProcess:
        """Start ``python -m validator`` on ``path`` and wait until it serves (``start``: the
        start it is for, whose cancel makes a server that ends early no error to log).

        Raises:
            ApiError: (503) it did not start.
        """
        settings = self._settings
        server, announced = self._launch_server(
            ["--socket", str(path), "--max-checks", str(settings.validation_max_concurrency),
             "--queue-timeout", str(settings.validation_queue_timeout_seconds), *options],
            child_environment(os.environ), PROJECT_ROOT)
        if announced not in (b"ready", b"running"):
            server.kill()
            server.wait()
            if start is not None and start.cancelled:
                raise ServiceUnavailable("the validator is not available; retry later",
                                         code="validation_failed")
            logger.error("the validator server did not start (it said %r)", announced[:200])
            raise ServiceUnavailable("the validator did not start; retry later",
                                     code="validation_failed")
        return server

    def _stop_server(self) -> None:
        """Stop the private server and remove its folder (under ``_lock``)."""
        if self._server is not None:
            _stop_process(self._server)
            self._server = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def _stop_process(server: ServerProcess) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def require_socket_path(path: Path) -> None:
    """Check a shared socket path; create its folder (mode 0700) when missing. A folder others
    could write to is refused: they could put a socket of their own in the validator's place.

    Raises:
        ValueError: the path is too long for a Unix socket, or its folder belongs to another
            user or others may write to it.
    """
    if len(os.fsencode(path)) >= _MAX_SOCKET_PATH_BYTES:
        raise ValueError(f"VALIDATION_SOCKET: {path} is longer than a Unix socket path may be "
                         f"({_MAX_SOCKET_PATH_BYTES - 1} bytes)")
    folder = path.parent
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = folder.stat()
    except OSError as exc:
        raise ValueError(f"VALIDATION_SOCKET: cannot make the folder {folder}: "
                         f"{exc.strerror or exc}") from exc
    if status.st_uid != os.getuid() or status.st_mode & 0o022:
        raise ValueError(
            f"VALIDATION_SOCKET: the folder {folder} must belong to this user (uid "
            f"{os.getuid()}) and be writable by no one else (it is uid {status.st_uid}, mode "
            f"{status.st_mode & 0o777:o})")
