"""The validator server: ``python -m validator --socket PATH``.

Started by the API (``api/validation.py``) with an environment free of credentials, it imports
torch and the check modules once, prints ``ready``, then accepts connections on the Unix socket
``PATH``; each connection is one check, served by a forked child that applies its limits (memory,
CPU time, wall-clock alarm: ``limits`` in the request) before it reads anything, so a check costs
a fork instead of a torch import, and a hostile file can only exhaust its own child. The server
exits when the process that started it is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import sys
from typing import Any

from validator.limits import apply_limits

#: How often the server looks whether the API that started it is still alive (seconds).
PARENT_POLL_SECONDS = 1.0
_READ_BYTES = 1024 * 1024


def _preload() -> None:
    # Imported once here, shared copy-on-write by every forked check.
    import numpy  # noqa: F401
    import torch

    import rift.checkpoints
    import rift.finetune
    import rift.models
    import rift.mrc  # noqa: F401
    import validator.checkpoint
    import validator.dataset
    import validator.fit
    import validator.service  # noqa: F401

    torch.set_num_threads(1)


def _read_request(connection: socket.socket) -> dict[str, Any]:
    parts = []
    while chunk := connection.recv(_READ_BYTES):
        parts.append(chunk)
    request: dict[str, Any] = json.loads(b"".join(parts))
    return request


def _serve_one(connection: socket.socket) -> None:
    from validator.service import answer

    request = _read_request(connection)
    limits = request.pop("limits")
    apply_limits(memory_bytes=int(limits["memory_bytes"]), cpu_seconds=int(limits["cpu_seconds"]))
    # SIGALRM's default action ends the process: the API then sees a closed connection.
    signal.alarm(max(1, math.ceil(float(limits["wall_seconds"]))))
    reply = answer(request)
    connection.sendall(json.dumps(reply).encode())
    connection.shutdown(socket.SHUT_WR)


def serve(path: str) -> None:
    """Accept checks on the Unix socket ``path`` until the parent process is gone."""
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    listener.settimeout(PARENT_POLL_SECONDS)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    print("ready", flush=True)
    # The API reads nothing more from this pipe: nothing written later may fill it and block.
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), sys.stdout.fileno())
    while os.getppid() == parent:
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        pid = os.fork()
        if pid == 0:
            listener.close()
            status = 1
            try:
                connection.settimeout(None)
                _serve_one(connection)
                status = 0
            finally:
                os._exit(status)
        connection.close()
    with contextlib.suppress(OSError):
        os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m validator")
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    args = parser.parse_args(argv)
    _preload()
    serve(args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
