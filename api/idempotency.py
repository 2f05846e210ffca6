"""``Idempotency-Key``: a client's name for one request, so that sending it again (after a lost
answer, a crash, a retry) returns what the first one made instead of making it twice. Honoured by
``POST /v1/jobs`` and the uploads (``POST /v1/checkpoints``, ``POST /v1/datasets``): the same key
with the same request answers 200 with the earlier resource, with another request 409
``idempotency_conflict``. Keys are per project."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Protocol, TypeVar

from fastapi import Header

from api.errors import Conflict

IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"

#: The optional header, as a route parameter (a malformed key is a 422 naming the header).
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", pattern=IDEMPOTENCY_KEY_PATTERN,
                       description="Printable ASCII, at most 255 characters.")]


def scoped_idempotency_key(project_id: str, key: str) -> str:
    """The stored form of a client's Idempotency-Key: keys are per project, so two projects
    using the same key neither collide nor learn of each other's resources."""
    return hashlib.sha256(f"{project_id}\n{key}".encode()).hexdigest()


def idempotency_conflict(key: str, kind: str, resource_id: str) -> Conflict:
    """409 for a key used before with another request; names the header and the earlier
    resource (``<kind>_id``)."""
    return Conflict(
        f"Idempotency-Key '{key}' was already used for {kind} {resource_id} with a different "
        f"request; use a new key for a new {kind}", field="Idempotency-Key",
        code="idempotency_conflict", details={f"{kind}_id": resource_id})


class _Replayable(Protocol):
    id: str
    request_hash: str | None


Replayable = TypeVar("Replayable", bound=_Replayable)


@dataclass(frozen=True)
class RequestKey:
    """A request's Idempotency-Key as the client sent it, as stored (per project), and the hash
    of what the request asked for."""

    client_key: str
    stored: str
    request_hash: str

    @classmethod
    def of(cls, project_id: str, key: str | None, request: str) -> RequestKey | None:
        """The key of a request described by ``request`` (what makes two requests the same);
        None without a key."""
        if key is None:
            return None
        return cls(key, scoped_idempotency_key(project_id, key),
                   hashlib.sha256(request.encode()).hexdigest())

    def replay(self, earlier: Replayable | None, kind: str) -> Replayable | None:
        """``earlier``, the ``kind`` recorded under this key (None: the key is new).

        Raises:
            Conflict: (409 ``idempotency_conflict``) it was recorded for another request.
        """
        if earlier is not None and earlier.request_hash != self.request_hash:
            raise idempotency_conflict(self.client_key, kind, earlier.id)
        return earlier
