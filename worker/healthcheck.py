"""``python -m worker.healthcheck NODE``: whether the Celery worker ``NODE`` (``worker@host``)
answers a ping over the broker; the container health check of the compose workers.

``celery -A worker.celery_app inspect ping`` does the same, but loads the worker's module to get
there, and with it torch: 6 CPU seconds each time (20 s on a loaded host), every 30 s, for a
check whose timeout is 15 s, so a busy host marked a sound worker unhealthy, and an idle one
spent a fifth of a core on its health checks. This builds only the Celery app of the settings
(:func:`persistence.queue.create_celery_app`: the broker, no task, no torch).
"""

from __future__ import annotations

import sys

from persistence.command_line import service_parser
from persistence.queue import create_celery_app
from persistence.settings import settings_or_exit


def main(argv: list[str] | None = None) -> int:
    parser = service_parser(
        "python -m worker.healthcheck",
        "Ask the Celery worker NODE, over the broker of BROKER_URL, whether it answers.",
        "Exit codes: 0 it answered, 1 it did not (or the broker cannot be reached; one line "
        "says which), 2 a usage error.")
    parser.add_argument("node", help="the worker's node name, as its -n/--hostname gave it "
                        "(e.g. worker@$HOSTNAME)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for the broker and for the answer (default 5)")
    args = parser.parse_args(argv)
    app = create_celery_app(settings_or_exit())
    try:
        with app.connection_for_write() as connection:
            # One try, bounded: Celery's own publish retries a broker that is down for minutes.
            connection.ensure_connection(max_retries=1, timeout=args.timeout)
            replies = app.control.ping(destination=[args.node], timeout=args.timeout, limit=1,
                                       connection=connection)
    except Exception as exc:  # kombu's and the transports' errors have no common base
        # The URL is not repeated: it may carry a password.
        print(f"rift: BROKER_URL: the broker cannot be reached ({type(exc).__name__}: "
              f"{' '.join(str(exc).split())[:200]})", file=sys.stderr)
        return 1
    if any(args.node in reply for reply in replies):
        return 0
    print(f"rift: worker {args.node} did not answer within {args.timeout:g} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
