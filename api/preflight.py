"""``python -m api.preflight``: the API's start-up checks on their own, for a start command that
launches several uvicorn processes (``--workers N``).

Checks the settings, the schema, the object store's bucket and keys, ``WORK_DIR``
(:mod:`persistence.startup`) and the folder of ``VALIDATION_SOCKET``. ``create_app`` makes the
first two and the last itself and stops its process on a failure; but uvicorn's supervisor
restarts a worker process that stops, for ever, so with several processes the one-line reason
would scroll away in a restart loop. Run first (the image's command does), a failure stops the
container once, with that line and status 1. Imports no torch.

It also empties ``PROMETHEUS_MULTIPROC_DIR`` (when set), before any API process writes there:
files of an earlier run would be added to this one's metrics (:mod:`api.multiprocess_metrics`).
"""

from __future__ import annotations

from pathlib import Path

from api.multiprocess_metrics import reset_directory
from api.validation import require_socket_path
from persistence.command_line import service_parser
from persistence.settings import settings_or_exit
from persistence.startup import check_service_start, os_reason, probe_writable_folder


def main(argv: list[str] | None = None) -> None:
    # Read first: `--help` must not run the checks (they empty PROMETHEUS_MULTIPROC_DIR).
    service_parser(
        "python -m api.preflight",
        "Check the API's settings, its database schema, broker, object store, WORK_DIR and "
        "VALIDATION_SOCKET folder, and empty PROMETHEUS_MULTIPROC_DIR, before `uvicorn "
        "--workers N` starts the API processes (the image's command runs it first).",
        "Exit codes: 0 the API may start (a dependency not answering yet is only logged), 1 a "
        "setting or the schema is at fault (one line naming it), 2 a usage error.",
    ).parse_args(argv)
    settings = settings_or_exit()
    check_service_start(settings)
    if settings.validation_socket:
        # Each API process checks it again in create_app; refused there, uvicorn's supervisor
        # would restart the process for ever (preflight passed, and the line scrolled away).
        try:
            require_socket_path(Path(settings.validation_socket))
        except ValueError as exc:
            raise SystemExit(f"rift: {exc}") from None
    if settings.prometheus_multiproc_dir is not None:
        prepare_metrics_directory(settings.prometheus_multiproc_dir)


def prepare_metrics_directory(directory: Path) -> None:
    """Empty ``directory`` and prove it writable, or stop with one line: every API process
    writes its metric files there from its first request on (was a traceback here, or, for a
    folder that exists but is not writable, API processes failing after the start)."""
    try:
        probe_writable_folder(directory)
        reset_directory(directory)
    except OSError as exc:
        raise SystemExit(f"rift: PROMETHEUS_MULTIPROC_DIR: {str(directory)!r} is not a "
                         f"writable folder ({os_reason(exc)}); name one this user may write, "
                         "or unset it") from None


if __name__ == "__main__":
    main()
