"""The validator server's spare children (``validator/check_pool.py``), through its real client
(``api.validation.Validator``): a check is served by a child forked before the request came, a
spare taken is replaced once its slot is free, the children never exceed the bound, a spare still
applies the check's limits, and no spare outlives its server, stopped or killed."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.errors import InvalidInput
from api.validation import ServerLauncher, Validator
from persistence.settings import Settings
from tests.shared_validator import process_gone, wait_until

GIB = 1024**3


@pytest.fixture
def validator(validator_launch: ServerLauncher) -> Iterator[Validator]:
    """A private server, two checks at once, 1 CPU second and 3 GiB per check (forked from the
    worker launcher: the same server program, without its imports)."""
    made = Validator(Settings(validation_max_concurrency=2, validation_cpu_seconds=1,
                              validation_memory_bytes=3 * GIB), launch=validator_launch)
    yield made
    made.close()


def children(pid: int) -> set[int]:
    """The live (not zombie) child processes of ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def spares_ready(server: int, count: int, *, ended: int | None = None) -> set[int]:
    """The server's children once there are ``count`` of them (its spares, when idle) and the
    child ``ended`` is not among them."""
    found: set[int] = set()

    def ready() -> bool:
        found.clear()
        found.update(children(server))
        return len(found) == count and ended not in found

    wait_until(ready, f"{count} spare children", timeout=60)
    return found


def oldest(pids: set[int]) -> int:
    """The process of ``pids`` started first: the spare the next check goes to."""
    def started(pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])

    return min(pids, key=started)


def test_a_started_server_has_its_warm_spares_before_any_check(validator: Validator) -> None:
    validator.start()
    assert validator.wait_ready(120) == "ready"
    assert validator._server is not None
    # No check was sent; the server said "ready" only once both spares had warmed up, so at
    # that instant (no waiting here) they are there, done with their warm-up and asleep in the
    # read of their socket pair, and the next check takes one.
    spares = children(validator._server.pid)
    assert len(spares) == 2
    waits = {Path(f"/proc/{pid}/wchan").read_text() for pid in spares}
    if waits != {"0"}:  # a kernel that hides where processes sleep shows "0"
        assert all(wait.startswith("unix_stream_read") for wait in waits), waits
    assert validator.probe()["pid"] in spares


def test_checks_back_to_back_are_each_answered(validator: Validator) -> None:
    # No wait for the spares between checks: a check that takes a spare still in its warm-up
    # (forked when the previous check ended) is served once the warm-up is done. The spare
    # then says "warmed" to a server that has already handed it the connection and closed its
    # end; that failed send used to end the spare, and the client saw its connection reset.
    served = [validator.probe()["pid"] for _ in range(8)]
    assert len(set(served)) == len(served)  # each check its own child


def test_a_spare_serves_the_check_and_is_replaced_and_none_outlives_the_server(
    validator: Validator,
) -> None:
    first = validator.probe()
    server = first["server_pid"]
    before = spares_ready(server, 2, ended=first["pid"])
    probe = validator.probe()
    # Served by a child that existed before the request: no fork on its path.
    assert probe["pid"] in before
    # Its slot is free again: a new spare fills it, and the bound still holds.
    after = spares_ready(server, 2, ended=probe["pid"])
    assert len(after - before) == 1
    validator.close()  # SIGTERM: the server ends its spares before it exits
    wait_until(lambda: all(process_gone(pid) for pid in after | {server}),
               "the server and its spares to exit")


def test_a_spare_applies_the_checks_limits_and_ends_with_a_killed_server(
    validator: Validator,
) -> None:
    first = validator.probe()
    server = first["server_pid"]
    spares = spares_ready(server, 2, ended=first["pid"])
    taker = oldest(spares)
    with pytest.raises(InvalidInput, match="more memory than the validation limit") as caught:
        validator.probe(allocate_bytes=4 * GIB)
    assert caught.value.code == "validation_limit"
    # The check went to the oldest spare, which ended with it; another took its slot.
    spares = spares_ready(server, 2, ended=taker)
    taker = oldest(spares)
    with pytest.raises(InvalidInput, match="1 CPU seconds") as caught:
        validator.probe(busy_seconds=30)  # RLIMIT_CPU ends it after 1 s
    assert caught.value.code == "validation_limit"
    spares = spares_ready(server, 2, ended=taker)
    os.kill(server, signal.SIGKILL)
    # An idle spare reads end-of-file where its server was, and exits.
    wait_until(lambda: all(process_gone(pid) for pid in spares), "the spares to exit")
