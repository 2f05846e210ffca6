"""An API process on a small disk of its own: a tmpfs mounted in a user and mount namespace
(``unshare -rm``) that only the API sees, for tests of a full disk under its store or database.
Skipped where the kernel refuses such a namespace (``namespaces_allowed``)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.ports import PortTaken, on_a_free_port, says_port_taken
from tests.service_fixtures import PROJECT_ROOT


def namespaces_allowed(folder: Path) -> bool:
    """Whether this kernel lets an unprivileged process mount a tmpfs on ``folder``."""
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(folder))}"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def seen_by(api: subprocess.Popen[bytes], path: Path) -> Path:
    """``path`` as the API's mount namespace sees it (through its ``/proc/<pid>/root``)."""
    return Path(f"/proc/{api.pid}/root") / path.relative_to("/")


@contextmanager
def api_on_own_disk(setup: str, env: Mapping[str, str],
                    log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run ``setup`` (shell: mount the tmpfs, copy or fill what the test needs) in a new user and
    mount namespace, then the API there on a free port with ``env``; yields the process and its
    URL once ``/healthz`` answers, and kills it (its whole session) at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> tuple[subprocess.Popen[bytes], str]:
        script = (f"{setup} && exec {shlex.quote(sys.executable)} -m uvicorn --factory "
                  f"api.main:create_app --host 127.0.0.1 --port {port}")
        with open(log, "wb") as out:
            api = subprocess.Popen(["unshare", "-rm", "sh", "-c", script], cwd=PROJECT_ROOT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1", **env}, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        started.append(api)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            if api.poll() is not None:
                if says_port_taken(log.read_text(errors="replace")):
                    raise PortTaken(f"the API: port {port} is taken")
                raise AssertionError(log.read_text()[-3000:])
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return api, url
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)

    try:
        yield on_a_free_port(start)  # a fresh port if another process took the first
    finally:
        for api in started:
            if api.poll() is None:
                os.killpg(api.pid, signal.SIGKILL)
            api.wait(timeout=30)
