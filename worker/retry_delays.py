"""How long a worker waits before trying again what an outage stopped (the database for a
finishing transaction, :mod:`worker.finishing`; the object store for a write,
:mod:`worker.store_writes`): the first wait, doubled each time up to the longest. Short, so the
work ends soon after the dependency is back; capped, so a long outage costs an attempt every few
seconds, not a stream of them."""

FIRST_RETRY_DELAY_S = 0.2
MAX_RETRY_DELAY_S = 2.0


def next_retry_delay(delay: float) -> float:
    """The wait after one of ``delay`` seconds."""
    return min(delay * 2, MAX_RETRY_DELAY_S)
