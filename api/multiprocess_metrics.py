"""The API's metrics when ``uvicorn --workers N`` runs several processes on one port.

Each process keeps its own counters, and a scrape lands on whichever process accepts it: without
sharing, a scrape showed that one process's part of the traffic, and the request counters went
up and down from one scrape to the next (which breaks ``rate()``). With
``PROMETHEUS_MULTIPROC_DIR`` set, prometheus_client (which reads that variable when it is
imported) writes every process's values to files of its own in that directory, and
:func:`shared_exposition` answers a scrape with the sum over all of them
(``MultiProcessCollector``).

- The directory must be emptied before the processes start (:func:`reset_directory`, run by
  ``python -m api.preflight`` in the image's and compose's start command): files left by an
  earlier run would be summed in.
- A worker process that died (uvicorn starts another in its place) leaves its files: its
  counters and histograms stay in the sums, as totals must; its live gauges (``livesum`` and the
  other ``live*`` modes) are dropped at the next scrape (:func:`forget_dead_processes`), since
  they describe a process that is gone. The API has no gauge today; one added later must choose
  its ``multiprocess_mode``.
- Values that are the same in every process (read from the database at scrape time) must not be
  summed: such a collector belongs in the scrape's own registry (evaluated once), not in the
  files. The API serves none today (the workers do, each on its own port).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

#: The files prometheus_client writes: ``{type}_{pid}.db``, ``gauge_{mode}_{pid}.db``.
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def reset_directory(directory: Path) -> None:
    """Create ``directory`` and remove the metric files in it (``*.db``, nothing else: the
    setting might name a directory shared with other files)."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):
        path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def forget_dead_processes(directory: Path) -> list[int]:
    """Drop the live gauges of the processes that no longer run; return their pids."""
    dead = sorted({int(match.group(1)) for path in directory.glob("gauge_live*.db")
                   if (match := _LIVE_GAUGE_FILE.fullmatch(path.name))
                   and not _process_alive(int(match.group(1)))})
    for pid in dead:
        mark_process_dead(pid, str(directory))
    return dead


def shared_exposition(directory: Path) -> bytes:
    """The text exposition of all processes' metrics in ``directory``, summed."""
    forget_dead_processes(directory)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return generate_latest(registry)
