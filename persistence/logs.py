"""Structured logs: one JSON object per line, carrying the ``job_id`` and ``request_id`` of the
work being done, for the API and the workers alike (no torch, no web imports).

The ids live in context variables: the API's request middleware binds ``request_id`` (from the
``X-Request-ID`` header, or a new one) for the request; a worker binds ``job_id`` and the job's
``request_id`` around a task. :class:`ContextFilter` copies them onto every record that passes a
handler, and :class:`JsonFormatter` writes the record as JSON. ``extra={...}`` fields of a log
call are written too when they are JSON-serialisable.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

#: An incoming X-Request-ID is kept if it is this safe (printable, no spaces, at most 64: the
#: column's width); anything else is replaced by a new id rather than refused.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
#: Attributes every LogRecord has; anything else on a record came from ``extra=``, except
#: uvicorn's ``color_message`` (the message again, with terminal colour codes).
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "job_id", "request_id", "color_message"}
_HANDLER_MARK = "_rift_json_handler"


def new_request_id() -> str:
    return uuid.uuid4().hex


def clean_request_id(value: str | None) -> str:
    """``value`` if it is a usable request id, else a new one."""
    return value if value is not None and _REQUEST_ID.fullmatch(value) else new_request_id()


def current_request_id() -> str | None:
    return _request_id.get()


def current_job_id() -> str | None:
    return _job_id.get()


@contextlib.contextmanager
def log_context(*, job_id: str | None = None, request_id: str | None = None) -> Iterator[None]:
    """Bind ``job_id`` and/or ``request_id`` (those given) for the block."""
    tokens: list[tuple[contextvars.ContextVar[str | None], contextvars.Token[str | None]]] = []
    if job_id is not None:
        tokens.append((_job_id, _job_id.set(job_id)))
    if request_id is not None:
        tokens.append((_request_id, _request_id.set(request_id)))
    try:
        yield
    finally:
        for variable, token in reversed(tokens):
            variable.reset(token)


class ContextFilter(logging.Filter):
    """Puts the bound ``job_id`` and ``request_id`` on each record (unless the call set them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = _job_id.get()
        if getattr(record, "request_id", None) is None:
            record.request_id = _request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "job_id", "request_id", ...extra, "exc_info"?}``."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "job_id": getattr(record, "job_id", None),
            "request_id": getattr(record, "request_id", None),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in document:
                document[key] = _jsonable(value)
        if record.exc_info:
            document["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


# C0 controls (CR and LF among them), DEL and C1 controls, and the Unicode line separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class TextFormatter(logging.Formatter):
    """The text format (``LOG_FORMAT=text``) with one line per record: a control character in a
    message (a file name, a label, an error text a client chose) is written as its escape
    (``\\n``, ``\\x1b``), so a value holding CR/LF cannot forge a line that looks like the
    service's, nor an ANSI sequence rewrite the terminal. A traceback keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return _CONTROL.sub(_escaped, super().formatMessage(record))


def _escaped(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def use_json(handler: logging.Handler) -> None:
    """Make ``handler`` write JSON lines with the bound ids (used on Celery's handlers)."""
    handler.setFormatter(JsonFormatter())
    if not any(isinstance(f, ContextFilter) for f in handler.filters):
        handler.addFilter(ContextFilter())


#: Libraries that log every request's full URL at INFO (httpx: ``HTTP Request: POST <url>``).
#: The workers POST webhook messages with httpx, and a receiver's URL is often its credential (a
#: chat service's hook path, a ``?token=``); a worker runs with Celery's ``--loglevel=INFO`` on
#: the root logger, so each delivery wrote that URL into the logs.
URL_LOGGING_LIBRARIES = ("httpx", "httpcore")


def keep_urls_out_of_logs() -> None:
    """Raise :data:`URL_LOGGING_LIBRARIES` to WARNING, whatever the root logger's level; their
    failures still show, our own lines name a delivery by its id."""
    for name in URL_LOGGING_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


#: The server's loggers: uvicorn gives them plain-text handlers of its own (``INFO:     Started
#: server process``, ``WARNING:  Invalid HTTP request received.``) before it builds the app, so a
#: JSON-logging API wrote those lines as text among its JSON ones.
SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def configure_logging(log_format: str, level: str = "INFO", stream: IO[str] | None = None
                      ) -> logging.Handler:
    """Install (or replace) the service's handler on the root logger; returns it. The server's
    loggers (:data:`SERVER_LOGGERS`) lose their own handlers and write through it too, at the
    levels the server set.

    Idempotent: calling it again (another app in the same process, a test) replaces the handler
    installed before instead of adding a second one.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    if log_format == "json":
        use_json(handler)
    else:
        handler.addFilter(ContextFilter())
        handler.setFormatter(TextFormatter(
            "%(asctime)s %(levelname)s %(name)s [job=%(job_id)s req=%(request_id)s] %(message)s"))
    root.addHandler(handler)
    for name in SERVER_LOGGERS:
        server_logger = logging.getLogger(name)
        if server_logger.handlers:  # not one uvicorn silenced (``--no-access-log``: none, kept so)
            server_logger.handlers.clear()
            server_logger.propagate = True
    for name in ("api", "worker", "persistence", "rift", "reporting"):
        logging.getLogger(name).setLevel(level.upper())
    keep_urls_out_of_logs()
    return handler
