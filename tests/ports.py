"""Loopback ports for the servers the tests start, without the bind-close-bind race.

``free_port()`` asks the kernel for a free port, closes it and hands the number on: until the
server binds it, any other process (another xdist worker's server, an outgoing connection that
draws the same ephemeral port) may take it, and the server fails with EADDRINUSE, or the test
talks to someone else's server. Two safe ways:

* :func:`listening_socket`: the test binds and listens itself and hands the socket to an
  in-process server (uvicorn's ``Server.run(sockets=...)``): no second bind, no race.
* :func:`on_a_free_port`: for a server in another process that binds its own port, start it
  on a fresh port again whenever it reports the port taken (:class:`PortTaken`).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: How many fresh ports :func:`on_a_free_port` tries: a clash is rare, two in a row rarer still.
PORT_ATTEMPTS = 5


class PortTaken(RuntimeError):
    """A server could not bind the port it was given (another process holds it)."""


def free_port() -> int:
    """A port free at this instant. Racy for a server started later (see the module docstring);
    fine where the test only needs a port nobody is meant to listen on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening_socket() -> socket.socket:
    """A TCP socket bound to a kernel-chosen port on 127.0.0.1 and already listening; the
    caller hands it to the server and closes it once the server is stopped."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def says_port_taken(output: str) -> bool:
    """Whether a server's output reports a failed bind: uvicorn, redis-server and werkzeug
    (moto) all print the OS's 'Address already in use' (errno 98 on Linux)."""
    lowered = output.lower()
    return "address already in use" in lowered or "errno 98" in lowered or \
        "is in use by another program" in lowered


def on_a_free_port(start: Callable[[int], T], attempts: int = PORT_ATTEMPTS) -> T:
    """``start(port)``: start a server on ``port`` and wait until it is ready, raising
    :class:`PortTaken` (after cleaning up) when it could not bind. Called with a fresh port
    after each PortTaken, up to ``attempts`` times; the last PortTaken is raised."""
    for _ in range(attempts - 1):
        try:
            return start(free_port())
        except PortTaken:
            continue
    return start(free_port())
