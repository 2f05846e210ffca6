"""Checks of the settings whose type alone says too little: URLs, log levels, device names,
allow-lists. Each returns the value (normalised where that is harmless) or raises ``ValueError``
with a message that says what is wrong and what a good value looks like; pydantic puts the
setting's name in front (:func:`persistence.settings.load_settings`).

They run when the settings are read, so a deployment with a malformed value stops at start with
one line naming the variable, instead of failing later, deep in SQLAlchemy, kombu or boto3, or
not at all (a silently ignored allow-list entry). Nothing here opens a connection: whether the
server behind a well-formed URL answers is the readiness probe's question (``/readyz``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from urllib.parse import urlsplit

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from rift.device_names import parse_device_name

#: Database backends the service runs on (the migrations and the SQL are written for these).
DATABASE_BACKENDS = ("sqlite", "postgresql")
#: Broker URL schemes the service is built and tested for: Redis in production, kombu's
#: SQLAlchemy transport in the embedded mode, the in-memory transport in tests.
BROKER_SCHEMES = ("redis", "rediss", "sqla", "memory")
#: The longest duration a setting may name (100 years). Far longer values, written to mean
#: "never" (JOB_TIME_LIMIT_SECONDS=1e12, ARTIFACT_RETENTION_DAYS=999999), passed and then
#: overflowed where a deadline or cutoff is computed from them: "date value out of range" in
#: every recovery pass, which then sent no expired lease's stage again, or in every janitor run;
#: a wait longer than about 292 years fails in the thread that waits ("timestamp out of range").
MAX_DURATION_SECONDS = 100 * 365 * 24 * 3600


def check_durations(durations: dict[str, float]) -> None:
    """Refuse a duration setting (``*_seconds``, ``*_days``, by field name) past
    :data:`MAX_DURATION_SECONDS`; the message names the variable and the value."""
    for name, value in durations.items():
        limit = MAX_DURATION_SECONDS / (86400 if name.endswith("_days") else 1)
        if value > limit:
            raise ValueError(f"{name.upper()}: at most {limit:.0f} (100 years; got {value:g}): "
                             "a longer one overflows the deadlines computed from it")


_HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
                        r"(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?$", re.IGNORECASE)


def check_database_url(url: str) -> str:
    """A SQLAlchemy URL of SQLite or Postgres (``postgres://`` and ``postgresql://`` included)."""
    try:
        parsed = make_url(url.replace("postgres://", "postgresql://", 1)
                          if url.startswith("postgres://") else url)
    except (ArgumentError, ValueError) as exc:
        raise ValueError("not a database URL; expected 'sqlite:///path/to/file.db' or "
                         "'postgresql+psycopg://user:password@host:5432/database'") from exc
    backend = parsed.get_backend_name()
    if backend not in DATABASE_BACKENDS:
        raise ValueError(f"database {backend!r} is not supported; use SQLite "
                         "('sqlite:///path') or Postgres ('postgresql+psycopg://...')")
    if backend == "postgresql" and parsed.get_driver_name() not in ("psycopg", "postgresql"):
        # Only psycopg 3 is installed: another driver fails at the first connection.
        raise ValueError(f"Postgres driver {parsed.get_driver_name()!r} is not installed; "
                         "use 'postgresql+psycopg://...' (psycopg 3)")
    if backend == "postgresql" and not parsed.host:
        raise ValueError("a Postgres URL needs a host ('postgresql+psycopg://user@host/db')")
    if backend == "postgresql" and "@" in (parsed.host or ""):
        # SQLAlchemy splits at the first '@': 'user:p@ss@db' is the host 'ss@db', which no
        # resolver knows, so the service started and stayed unready, "unreachable" for ever.
        raise ValueError("the host part holds an '@': write an '@' in the user name or "
                         "password as %40 ('postgresql+psycopg://user:p%40ss@host/db')")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ValueError(f"bad port {parsed.port} (1 to 65535)")
    if backend == "sqlite" and parsed.host:
        # SQLAlchemy refused it at the first connection, with a traceback.
        raise ValueError(f"a SQLite URL has no host, so three slashes before a relative path "
                         f"and four before an absolute one ('sqlite:///var/rift.db', "
                         f"'sqlite:////data/rift.db'), not 'sqlite://{parsed.host}'")
    return url


def database_backend(url: str) -> str:
    """'sqlite' or 'postgresql' for a URL :func:`check_database_url` accepted."""
    return "postgresql" if url.startswith("postgres://") else make_url(url).get_backend_name()


def is_redis_url(url: str) -> bool:
    """Whether a broker URL names Redis (which also carries the live events' pub/sub)."""
    return url.split("://", 1)[0].lower() in ("redis", "rediss")


def check_broker_url(url: str) -> str:
    """A Celery broker URL of a transport the service supports, with a well-formed address."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    transport = scheme.split("+", 1)[0]
    if transport not in BROKER_SCHEMES:
        raise ValueError("expected 'redis://host:6379/0' (production) or "
                         "'sqla+sqlite:///path/broker.db' (embedded), got scheme "
                         f"{scheme or '(none)'!r}")
    if transport == "sqla":
        check_database_url(url.split("+", 1)[1])
        return url
    _check_port(url)
    database = urlsplit(url).path.strip("/")
    if transport in ("redis", "rediss") and database and not database.isdigit():
        # kombu refuses it at every connection ("Database is int between 0 and limit - 1"):
        # the workers crashed with a traceback and every job was answered 503.
        raise ValueError(f"the Redis database number must be a whole number "
                         f"('redis://host:6379/0'), not {database[:20]!r}")
    return url


def check_http_url(url: str | None) -> str | None:
    """An ``http(s)://host[:port]`` URL (an S3 endpoint), or None (also for an empty value: a
    compose file's ``${VAR:-}`` gives one)."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected 'http://host:port' or 'https://host'")
    _check_port(url)
    return url


#: What boto3 accepts as a bucket name (checked by it before any request, with a traceback);
#: S3 and MinIO refuse more (upper case, '_') when the bucket is made, which `createbucket` says.
_BUCKET_NAME = re.compile(r"^[a-zA-Z0-9.\-_]{1,255}$")
#: What botocore accepts as a region name (``InvalidRegionError`` otherwise, at the first client).
_REGION_NAME = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?$")


def check_bucket_name(name: str | None) -> str | None:
    """A bucket's bare name: not a URL, not a path (``s3://rift``, ``rift/prefix``)."""
    if name and _BUCKET_NAME.match(name) is None:
        raise ValueError("expected a bucket's bare name (letters, digits, '.', '-'), not a URL "
                         "or a path")
    return name


def check_region_name(name: str) -> str:
    """An AWS-style region name (``us-east-1``); empty means boto3's default."""
    if name and _REGION_NAME.match(name) is None:
        raise ValueError("expected a region name such as 'us-east-1'")
    return name


def check_log_level(level: str) -> str:
    """A :mod:`logging` level name (any case), returned in upper case."""
    name = level.strip().upper()
    if name not in logging.getLevelNamesMapping():
        raise ValueError("expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return name


def check_not_blank(value: object) -> object:
    """Refuse an empty or blank value (before parsing): for a variable whose mere presence
    changes behaviour (prometheus_client takes an empty ``PROMETHEUS_MULTIPROC_DIR`` as the
    current directory), "set but empty" must not silently mean either "off" or ".". """
    if isinstance(value, str) and not value.strip():
        raise ValueError("empty: unset the variable, or name a directory")
    return value


def check_device_name(name: str | None) -> str | None:
    """A device name of :data:`rift.config.DEVICE_PATTERN`, or None (also for an empty value)."""
    if not name:
        return None
    try:
        parse_device_name(name)
    except ValueError as exc:
        raise ValueError(f"{exc}; expected cpu, cuda, cuda:N, mps, xpu or xpu:N") from exc
    return name


def check_allow_list(text: str) -> str:
    """Comma-separated IP networks and host names; an entry that is neither is refused (it would
    otherwise be kept as a host name that no URL can match)."""
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if "/" in entry or ":" in entry or _HOST_NAME.match(entry) is None:
                raise ValueError(f"entry {entry!r} is neither an IP network ('10.1.0.0/16') "
                                 "nor a host name") from None
    return text


def check_cors_origins(value: object) -> object:
    """``CORS_ALLOW_ORIGINS``: origins separated by commas (or a JSON list of them, the form
    this setting had first), each normalised to how a browser writes ``Origin`` (lower case,
    no default port, no trailing '/'), or ``*`` alone. Any other form would match no browser's
    ``Origin``, so the pages it was meant for were refused without a word."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                entries = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a valid JSON list ({exc.msg}); or write the origins "
                                 "comma-separated: 'https://a.example,https://b.example'") from None
        else:
            entries = text.split(",")
    elif isinstance(value, (list, tuple)):
        entries = list(value)
    else:
        return value  # not text nor a list: pydantic's type check names it
    if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
        raise ValueError("expected origins, comma-separated ('https://a.example,"
                         "https://b.example') or a JSON list of strings")
    origins = [_origin(entry.strip()) for entry in entries if entry.strip()]
    if "*" in origins and len(origins) > 1:
        raise ValueError("'*' (any origin) stands alone; list exact origins, or give '*' only")
    return list(dict.fromkeys(origins))


def _origin(entry: str) -> str:
    """``entry`` as a browser's ``Origin`` header writes it (``*`` kept), or ``ValueError``."""
    if entry == "*":
        return entry
    form = "an origin is 'https://host' or 'http://host:port', as a browser sends it in Origin"
    parts = urlsplit(entry)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{entry!r} is not an origin: {form}")
    if parts.username is not None:
        raise ValueError(f"{entry!r} is not an origin: no user name in it; {form}")
    host = parts.hostname  # lower case, an IPv6 address without its brackets
    if _HOST_NAME.match(host) is None:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            # 'https://*.example.org' among them: origins are matched exactly.
            raise ValueError(f"{entry!r} is not an origin: {host!r} is not a host name nor an "
                             "IP address (no wildcards: list each origin)") from None
        if ":" in host:
            host = f"[{host}]"
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{entry!r} is not an origin: bad port ({exc})") from None
    default = 443 if scheme == "https" else 80
    origin = f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in entry or "#" in entry:
        raise ValueError(f"{entry!r} is not an origin: it has a path, query or fragment; "
                         f"did you mean {origin!r}?")
    return origin


def _check_port(url: str) -> None:
    try:
        _ = urlsplit(url).port  # parsed only when asked for
    except ValueError as exc:
        raise ValueError(f"bad port ({exc})") from exc
