"""Projects and their API keys: creating, finding, revoking, and recording use.

A key is ``rift_<prefix>_<secret>``: ``prefix`` (12 hex digits) finds the row, ``secret`` (32
random bytes, URL-safe base64) proves possession. Only the SHA-256 of the secret is stored: a
fast hash is enough because the secret is random and long (no dictionary to try), and it keeps
each request's check cheap. The comparison is constant-time.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from persistence.audit import Actor, record_audit_event
from persistence.models import (
    ApiKey,
    Project,
    by_code_point,
    new_id,
    utcnow,
)
from persistence.storage_ledger import adopt_unowned_rows

KEY_PREFIX = "rift_"
_KEY = re.compile(r"^rift_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})$")
PROJECT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.\-]{0,63}$"
_PROJECT_NAME = re.compile(PROJECT_NAME_PATTERN)
#: ``last_used_at`` is written at most this often per key: one UPDATE a minute, not per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class Scope(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


#: What each scope grants: write implies read, admin implies everything.
SCOPE_GRANTS: dict[Scope, frozenset[Scope]] = {
    Scope.READ: frozenset({Scope.READ}),
    Scope.WRITE: frozenset({Scope.READ, Scope.WRITE}),
    Scope.ADMIN: frozenset({Scope.READ, Scope.WRITE, Scope.ADMIN}),
}


class AdminError(Exception):
    """A key or project operation that cannot be done (unknown name, bad input)."""


def effective_scopes(scopes: str) -> frozenset[Scope]:
    """The scopes a key's stored ``scopes`` text grants (implied ones included)."""
    granted: set[Scope] = set()
    for name in scopes.split():
        if name in Scope.__members__.values():
            granted |= SCOPE_GRANTS[Scope(name)]
    return frozenset(granted)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def parse_key(key: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed key, else None."""
    match = _KEY.fullmatch(key)
    return (match.group(1), match.group(2)) if match else None


@dataclass(frozen=True)
class NewKey:
    """A key just created: ``key`` is the only copy of the secret (show it once)."""

    row: ApiKey
    key: str


def check_project_name(name: str) -> str:
    if not _PROJECT_NAME.fullmatch(name):
        raise AdminError("a project name is 1 to 64 characters: lower-case letters, digits and "
                         "_ . - (starting with a letter or digit)")
    return name


def project_by_name(session: Session, name: str) -> Project | None:
    return session.execute(select(Project).where(Project.name == name)).scalar_one_or_none()


def create_project(session: Session, name: str, *, exist_ok: bool = False,
                   actor: Actor | None = None) -> Project:
    """Create the project ``name`` (or return it when ``exist_ok``), recording ``actor``'s
    ``project.created`` with it (none when it existed). Commits."""
    check_project_name(name)
    existing = project_by_name(session, name)
    if existing is not None:
        if exist_ok:
            return existing
        raise AdminError(f"project '{name}' already exists")
    project = Project(id=new_id(), name=name, created_at=utcnow())
    session.add(project)
    if actor is not None:
        record_audit_event(session, actor, "project.created", project_id=project.id,
                           resource_id=project.id, details={"name": name})
    try:
        session.commit()
    except IntegrityError:
        # The same name created at the same moment by another request (two admins, two
        # `rift-admin keys create` runs for a new project): its unique index refused this row.
        session.rollback()
        existing = project_by_name(session, name)
        if existing is None:
            raise
        if exist_ok:
            return existing
        raise AdminError(f"project '{name}' already exists") from None
    return project


def adopt_unowned(session: Session, project: Project) -> dict[str, int]:
    """Give ``project`` every checkpoint, dataset and job that has no project (rows made before
    projects existed, which no key can see); returns how many of each. Commits."""
    # Their bytes count against its stored-bytes quota from now: added to its ledger.
    moved = adopt_unowned_rows(session, project.id)
    session.commit()
    return {name: moved[name] for name in ("checkpoints", "datasets", "jobs")}


def list_projects(session: Session) -> list[Project]:
    """Every project, by name."""
    return by_code_point(session.execute(select(Project)).scalars(), lambda project: project.name)


def check_key_request(scopes: list[str], name: str | None = None) -> list[str]:
    """The scopes a new key gets (default ``read write``), sorted; :class:`AdminError` for an
    unknown scope or a name over 128 characters. Check before making anything for the key (its
    project), so that a refused request leaves nothing behind."""
    chosen = sorted(set(scopes or [Scope.READ, Scope.WRITE]))
    unknown = [s for s in chosen if s not in Scope.__members__.values()]
    if unknown:
        raise AdminError(f"unknown scope '{unknown[0][:32]}'; use read, write or admin")
    if name is not None and len(name) > 128:
        raise AdminError("a key name is at most 128 characters")
    return chosen


#: A project's own limits (columns of ``projects``; None means the setting's default) and the
#: largest value each may take: the BIGINT columns' maximum, or a sane bound.
LIMIT_MAXIMA: dict[str, int] = {
    "max_active_jobs": 100_000,
    "max_stored_bytes": 2**63 - 1,
    "max_job_cost": 2**63 - 1,
    "max_job_gflop": 2**63 - 1,
    "max_requests_per_minute": 1_000_000,
    "max_streams_per_key": 100_000,
}


def set_project_limits(session: Session, project: Project, limits: dict[str, int | None],
                       *, actor: Actor | None = None) -> Project:
    """Set the given limits of ``project`` (None: back to the setting's default); the others
    stay. :class:`AdminError` naming the limit for an unknown one or a value out of 1..its
    maximum, before anything is changed. ``actor``'s ``project.limits_changed`` names the
    limits that changed (from, to); none is recorded when none did. Commits."""
    for limit, value in limits.items():
        if limit not in LIMIT_MAXIMA:
            raise AdminError(f"unknown limit '{limit[:64]}'; one of {', '.join(LIMIT_MAXIMA)}")
        if value is not None and not 1 <= value <= LIMIT_MAXIMA[limit]:
            raise AdminError(f"{limit} must be between 1 and {LIMIT_MAXIMA[limit]}, "
                             f"not {value}")
    changed = {limit: {"from": getattr(project, limit), "to": value}
               for limit, value in limits.items() if getattr(project, limit) != value}
    for limit, value in limits.items():
        setattr(project, limit, value)
    if actor is not None and changed:
        record_audit_event(session, actor, "project.limits_changed", project_id=project.id,
                           resource_id=project.id, details={"name": project.name,
                                                            "limits": changed})
    session.commit()
    return project


def create_key(session: Session, project: Project, scopes: list[str],
               name: str | None = None, *, actor: Actor | None = None) -> NewKey:
    """A new key of ``project`` with ``scopes`` (default ``read write``), recorded as
    ``actor``'s ``key.created`` (its id, prefix and scopes; never the secret). Commits."""
    chosen = check_key_request(scopes, name)
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    row = ApiKey(id=new_id(), project_id=project.id, prefix=prefix,
                 secret_hash=hash_secret(secret), scopes=" ".join(chosen), name=name,
                 created_at=utcnow())
    session.add(row)
    if actor is not None:
        record_audit_event(session, actor, "key.created", project_id=project.id,
                           resource_id=row.id, details={"prefix": prefix, "scopes": chosen})
    session.commit()
    return NewKey(row=row, key=f"{KEY_PREFIX}{prefix}_{secret}")


def list_keys(session: Session, project_id: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if project_id is not None:
        query = query.where(ApiKey.project_id == project_id)
    return list(session.execute(query).scalars())


def revoke_key(session: Session, key_id: str, project_id: str | None = None, *,
               actor: Actor | None = None) -> ApiKey | None:
    """Revoke the key (idempotent); None if there is no such key (in ``project_id``). The first
    revocation is recorded as ``actor``'s ``key.revoked``; a repeat changes nothing and records
    nothing. Commits."""
    row = session.get(ApiKey, key_id)
    if row is None or (project_id is not None and row.project_id != project_id):
        session.commit()
        return None
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        if actor is not None:
            record_audit_event(session, actor, "key.revoked", project_id=row.project_id,
                               resource_id=row.id, details={"prefix": row.prefix})
    session.commit()
    return row


def authenticate(session: Session, key: str, now: datetime | None = None
                 ) -> tuple[ApiKey, Project] | None:
    """The live key and its project for the presented ``key``, or None (unknown, wrong secret,
    revoked). Records the use (at most once per :data:`LAST_USED_RESOLUTION`). Commits."""
    parsed = parse_key(key)
    if parsed is None:
        return None
    prefix, secret = parsed
    found = session.execute(
        select(ApiKey, Project).join(Project, Project.id == ApiKey.project_id)
        .where(ApiKey.prefix == prefix)).one_or_none()
    if found is None:
        session.commit()
        return None
    row, project = found
    if not hmac.compare_digest(row.secret_hash, hash_secret(secret)) or row.revoked_at is not None:
        session.commit()
        return None
    now = now or utcnow()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        # Conditional, so concurrent requests of one key write once.
        stale = now - LAST_USED_RESOLUTION
        session.execute(
            update(ApiKey).where(ApiKey.id == row.id)
            .where((ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at <= stale))
            .values(last_used_at=now).execution_options(synchronize_session=False))
    session.commit()
    return row, project
