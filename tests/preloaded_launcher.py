"""Real processes without paying their imports each time: a launcher that forks them.

Each service test that needs a Celery worker starts a real ``celery worker`` process. Started
with ``subprocess.Popen``, every one of them imports torch, the RiFT library, Celery and
SQLAlchemy again: about 5 s of CPU on a 2-core machine, the largest single cost of the service
tests. A launcher process (one per test process, started on first use) imports those modules
once and then forks each worker from itself. The child runs Celery's own command line with the
test's arguments, environment, working directory and log file: the same program and the same
process life (its own pid and session, signals, exit codes), without the imports.

The launcher imports nothing that reads the environment at import (``worker.celery_app`` builds
its app from Settings then): each worker's environment is set in the child before Celery imports
the app. The launcher starts no threads, so forking it is safe.

The same design serves the tests' other Python processes, from a launcher of their own kind
(``PRELOADS``): ``worker`` (torch, the library, Celery: workers, the benchmark scripts of
``tests/test_benchmarks.py``, ``python -m rift``) and ``api`` (FastAPI, SQLAlchemy, uvicorn with
httptools and uvloop, which it picks by itself, httpx, the ``api`` package, ``rift-admin`` and
``rift_client``; never torch, since an API process must not import it: the launcher refuses to
start if torch got imported), so a process forked from it has torch only if its own code
imports it, as a fresh one would. A child runs Celery's command line (the default), a module as
``python -m`` does (``"module"``), a script as ``python PATH`` does (``"script"``), or a console
script's function (``"call": "package.module:function"``, exit status its return value).

Protocol: one JSON request and one JSON reply per connection on a Unix socket.
``{"op": "spawn", "argv": [...], "env": {...}, "cwd": ..., "log": ...}`` → ``{"pid": N}``
(optional: ``"module"``, ``"script"`` or ``"call"``; ``"stdout"`` and ``"stderr"`` paths that
take the program's streams apart instead of both in ``"log"``);
``{"op": "status", "pid": N}`` → ``{"returncode": int | null}`` (negative: killed by that signal,
as ``subprocess`` reports it). The launcher reaps its children and keeps their exit codes.

    python -m tests.preloaded_launcher SOCKET_PATH [worker|api]
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Modules a worker imports anyway, none of them reading the environment at import.
PRELOADED = ("torch", "torch._dynamo", "rift.pipeline", "persistence.queue", "persistence.models",
             "celery.bin.celery", "celery.worker", "celery.concurrency.solo",
             "kombu.transport.redis", "prometheus_client", "psycopg")
#: What an API process (``uvicorn --factory api.main:create_app``), ``riftctl`` and the service's
#: command-line tools import anyway; torch is not among them and must not come in with them.
API_PRELOADED = ("api.main", "uvicorn.main", "uvicorn.protocols.http.httptools_impl", "uvloop",
                 "uvicorn.lifespan.on", "httpx", "rift_client.cli", "persistence.admin_cli",
                 "persistence.janitor", "psycopg", "prometheus_client")
PRELOADS = {"worker": PRELOADED, "api": API_PRELOADED}
#: Launchers whose processes must never have imported these.
FORBIDDEN = {"api": ("torch",)}
READY_LINE = "launcher ready"


# --------------------------------------------------------------------------------------------
# The launcher process
# --------------------------------------------------------------------------------------------
def _run_child(request: dict[str, Any], listener: socket.socket) -> None:
    """In the forked child: become the requested program; never returns."""
    code: int = 1
    try:
        listener.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        opened: dict[str, int] = {}  # one file for both streams: one descriptor, as 2>&1
        for fd, path in ((1, request.get("stdout") or request["log"]),
                         (2, request.get("stderr") or request["log"])):
            if path not in opened:
                opened[path] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(opened[path], fd)
        for stream in opened.values():
            os.close(stream)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        # The interpreter read PYTHONPATH when the launcher started: a worker's own entries (an
        # installed plugin's folder, say) go on sys.path as a fresh interpreter would put them.
        entries = [entry for entry in request["env"].get("PYTHONPATH", "").split(os.pathsep)
                   if entry and entry not in sys.path]
        sys.path[1:1] = entries
        importlib.invalidate_caches()
        sys.argv = list(request["argv"])
        _run_program(request)
        code = 0
    except SystemExit as exit_:
        # As the interpreter does at exit: a non-integer code is printed and means status 1.
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        if _kind(request) != "celery":
            # As the interpreter does at exit (Celery's worker never needed it): wait for the
            # program's non-daemon threads, then run the atexit handlers (its own, and those the
            # launcher's imports registered, which a fresh interpreter would have too).
            with contextlib.suppress(BaseException):
                threading._shutdown()  # type: ignore[attr-defined]
            with contextlib.suppress(BaseException):
                atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _kind(request: dict[str, Any]) -> str:
    for kind in ("module", "script", "call"):
        if kind in request:
            return kind
    return "celery"


def _run_program(request: dict[str, Any]) -> None:
    """Run the requested program in this (child) process, as its command line would."""
    kind = _kind(request)
    if kind == "module":  # python -m NAME: the working directory first on sys.path
        sys.path[0] = os.getcwd()
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    elif kind == "script":  # python PATH: the script's folder first on sys.path
        script = os.path.abspath(request["script"])
        sys.path[0] = os.path.dirname(script)
        runpy.run_path(script, run_name="__main__")
    elif kind == "call":  # a console script: sys.exit(function())
        module, _, function = request["call"].partition(":")
        sys.exit(getattr(importlib.import_module(module), function)())
    else:
        from celery.bin.celery import main as celery_main

        celery_main()


def _reap(exited: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        exited[pid] = (-os.WTERMSIG(status) if os.WIFSIGNALED(status)
                       else os.WEXITSTATUS(status))


def serve(socket_path: str, preload: str = "worker") -> None:
    for name in PRELOADS[preload]:
        __import__(name)
    imported = [name for name in FORBIDDEN.get(preload, ()) if name in sys.modules]
    if imported:
        raise SystemExit(f"the {preload} launcher imported {imported}: its processes must not")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(16)
    exited: dict[int, int] = {}
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    print(READY_LINE, flush=True)
    parent = os.getppid()
    while os.getppid() == parent:  # a test process killed outright leaves no launcher behind
        _reap(exited)
        if not selector.select(timeout=0.05):
            continue
        connection, _ = listener.accept()
        with connection:
            request = json.loads(_read_line(connection))
            if request["op"] == "spawn":
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _run_child(request, listener)
                reply: dict[str, Any] = {"pid": pid}
            elif request["op"] == "status":
                _reap(exited)
                reply = {"returncode": exited.get(int(request["pid"]))}
            else:
                reply = {"error": f"unknown op {request['op']!r}"}
            connection.sendall(json.dumps(reply).encode() + b"\n")


def _read_line(connection: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


# --------------------------------------------------------------------------------------------
# The test side
# --------------------------------------------------------------------------------------------
class Launcher:
    """The launcher process of one test process; ``spawn`` forks a process from it.

    ``preload``: ``"worker"`` (torch, the library, Celery) or ``"api"`` (the API stack and
    ``rift_client``, no torch); ``python_path``: folders put first on the launcher's sys.path (a
    checkout's ``clients/python``, say), as PYTHONPATH would."""

    def __init__(self, root: Path, project_root: Path, preload: str = "worker",
                 python_path: tuple[Path, ...] = ()) -> None:
        if preload not in PRELOADS:
            raise ValueError(f"preload must be one of {sorted(PRELOADS)}, not {preload!r}")
        self.socket_path = str(root / "launcher.sock")
        self.log_path = root / "launcher.log"
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        if python_path:
            env["PYTHONPATH"] = os.pathsep.join(
                [*map(str, python_path), *filter(None, [os.environ.get("PYTHONPATH")])])
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.preloaded_launcher", self.socket_path, preload],
                cwd=project_root, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self._ready = False

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the launcher has made its imports (spawn waits for it too)."""
        deadline = time.monotonic() + timeout
        while not self._ready:
            if READY_LINE in self.log_path.read_text(errors="replace"):
                self._ready = True
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the worker launcher did not start:\n"
                                   + self.log_path.read_text(errors="replace")[-4000:])
            time.sleep(0.05)

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        self.wait_ready()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(self.socket_path)
            connection.sendall(json.dumps(request).encode() + b"\n")
            reply: dict[str, Any] = json.loads(_read_line(connection))
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def spawn(self, argv: list[str], env: Mapping[str, str], cwd: Path, log: Path, *,
              module: str | None = None, script: Path | None = None, call: str | None = None,
              stdout: Path | None = None, stderr: Path | None = None) -> ForkedProcess:
        """Fork a process running ``argv``: Celery's command line, or the given ``module``
        (``python -m``), ``script`` (``python PATH``) or ``call`` (a console script's
        ``"module:function"``). Its output goes to ``log``, or stdout and stderr apart."""
        request: dict[str, Any] = {"op": "spawn", "argv": argv, "env": dict(env),
                                   "cwd": str(cwd), "log": str(log)}
        for key, value in (("module", module), ("script", script), ("call", call),
                           ("stdout", stdout), ("stderr", stderr)):
            if value is not None:
                request[key] = str(value)
        reply = self._ask(request)
        return ForkedProcess(int(reply["pid"]), argv, self)

    def run(self, argv: list[str], env: Mapping[str, str], cwd: Path, *, timeout: float,
            module: str | None = None, script: Path | None = None, call: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        """As ``subprocess.run(..., capture_output=True, text=True, timeout=timeout)`` would, for
        a forked ``module``, ``script`` or ``call`` (see :meth:`spawn`): its exit status and its
        stdout and stderr apart. Past ``timeout`` its process group is killed and
        ``subprocess.TimeoutExpired`` raised."""
        stem = self.log_path.with_name(f"run-{uuid.uuid4().hex[:12]}")
        out, err = stem.with_suffix(".out"), stem.with_suffix(".err")
        process = self.spawn(argv, env, cwd, stem.with_suffix(".log"), module=module,
                             script=script, call=call, stdout=out, stderr=err)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
            raise
        try:
            return subprocess.CompletedProcess(argv, code, out.read_text(errors="replace"),
                                               err.read_text(errors="replace"))
        finally:
            out.unlink(missing_ok=True)
            err.unlink(missing_ok=True)

    def returncode(self, pid: int) -> int | None:
        code = self._ask({"op": "status", "pid": pid})["returncode"]
        return None if code is None else int(code)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


class ForkedProcess:
    """A process forked by the launcher, with the part of ``subprocess.Popen``'s interface the
    tests use (``pid``, ``poll``, ``wait``, ``send_signal``, ``terminate``, ``returncode``)."""

    def __init__(self, pid: int, argv: list[str], launcher: Launcher) -> None:
        self.pid = pid
        self.args = argv
        self.returncode: int | None = None
        self._launcher = launcher

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._launcher.returncode(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(0.05)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # once reaped, the pid may belong to another process
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def run_python_module(launcher: Launcher | None, module: str, args: list[str], *,
                      env: Mapping[str, str], cwd: Path, timeout: float
                      ) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` with ``env`` and ``cwd``, its output captured as text: forked
    from ``launcher``, or a fresh interpreter when it is None."""
    if launcher is not None:
        return launcher.run([module, *args], env, cwd, module=module, timeout=timeout)
    return subprocess.run([sys.executable, "-m", module, *args], env=dict(env), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)


if __name__ == "__main__":
    serve(sys.argv[1], *sys.argv[2:3])
