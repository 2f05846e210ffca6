"""Who is calling: the API key in ``Authorization: Bearer <key>`` (never a cookie or a query
parameter), its project, its scopes, and the project's request rate.

Every ``/v1`` route except the probes depends on :func:`get_caller`; GET and HEAD need the
``read`` scope, every other method ``write``, the admin routes ``admin`` (write implies read,
admin implies both). A missing, malformed, unknown or revoked key is a 401 with
``WWW-Authenticate: Bearer`` (``error="invalid_token"`` when a key was refused); a key without
the scope is a 403 naming it, in the body and the challenge. The key is judged before anything
else of the request, a JSON body included (:mod:`api.expect_continue`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import State

from api.errors import Forbidden, TooManyRequests, Unauthorized
from api.limits import RateLimiter, project_rate_key, retry_after_header
from persistence.api_keys import Scope, authenticate, effective_scopes
from persistence.audit import Actor
from persistence.settings import Settings
from persistence.usage import ProjectLimits

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Paths of the admin routes (api/routes/admin.py), which need the admin scope whatever the method.
ADMIN_PATH_PREFIX = "/v1/admin/"


def required_scope(method: str, path: str) -> Scope:
    """The scope a request needs: ``admin`` under /v1/admin, else ``read`` for reads and
    ``write`` for the rest. One rule, so a 403 names the scope that would let the request
    through (a read key on POST /v1/admin/projects is told ``admin``, not ``write``)."""
    if path.startswith(ADMIN_PATH_PREFIX):
        return Scope.ADMIN
    return Scope.READ if method in READ_METHODS else Scope.WRITE

_bearer = HTTPBearer(auto_error=False, description="An API key: rift_<prefix>_<secret>")


@dataclass(frozen=True)
class Caller:
    """The authenticated caller: a key of a project, with its scopes and the project's limits."""

    project_id: str
    project_name: str
    key_id: str
    scopes: frozenset[Scope]
    limits: ProjectLimits
    #: The key's public prefix (rift_<prefix>_…), which the audit trail names it by.
    key_prefix: str = ""

    @property
    def actor(self) -> Actor:
        """The key as the audit trail records who made a change."""
        return Actor.key(self.key_id, self.key_prefix)

    def require(self, scope: Scope) -> None:
        """Raise :class:`Forbidden` (403) unless the key has ``scope``."""
        if scope not in self.scopes:
            raise Forbidden(f"this API key lacks the '{scope}' scope this request needs",
                            scope=str(scope))


#: The request-state key of a caller authenticated before the route ran (api.expect_continue:
#: before FastAPI reads a JSON body), which :func:`get_caller` takes instead of looking the key
#: up again.
AUTHENTICATED_CALLER = "authenticated_caller"


def _state_rate_limiter(request: Request) -> RateLimiter:
    return request.app.state.rate_limiter  # type: ignore[no-any-return]


def authorized_caller(state: State, authorization: list[str], token: str | None, method: str,
                      path: str) -> Caller:
    """The caller whose key ``token`` is (``authorization``: every Authorization header sent),
    with the scope ``method`` on ``path`` needs; not counted against the rate limit. ``state``
    is the app's (its settings and session factory).

    Raises:
        Unauthorized: no key, several, or one unknown, malformed or revoked (401).
        Forbidden: the key lacks the scope (403).
    """
    if len(authorization) > 1:
        # Which one counts would be a guess: this app read the first, a proxy in front of it
        # may check or add another. Two keys are never meant, so none is used.
        raise Unauthorized(f"the request has {len(authorization)} Authorization headers; "
                           "send one", error="invalid_request")
    if token is None:
        # Which is wrong, without quoting the header: it may be a key sent without its scheme.
        sent = ("the Authorization header is not 'Bearer <key>' (another scheme, or the key "
                "without 'Bearer '): " if authorization else "")
        raise Unauthorized(f"{sent}send an API key as 'Authorization: Bearer <key>' (create one "
                           "with rift-admin keys create)")
    settings: Settings = state.settings
    with state.session_factory() as session:
        found = authenticate(session, token)
    if found is None:
        raise Unauthorized("the API key is not valid (unknown, malformed or revoked)",
                           error="invalid_token")
    key, project = found
    caller = Caller(project_id=project.id, project_name=project.name, key_id=key.id,
                    scopes=effective_scopes(key.scopes), limits=ProjectLimits.of(project, settings),
                    key_prefix=key.prefix)
    caller.require(required_scope(method, path))
    return caller


def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    limiter: Annotated[RateLimiter, Depends(_state_rate_limiter)],
) -> Caller:
    """Authenticate the request's key, check the method's scope and count the request."""
    caller: Caller | None = getattr(request.state, AUTHENTICATED_CALLER, None)
    if caller is None:
        caller = authorized_caller(request.app.state, request.headers.getlist("authorization"),
                                   credentials.credentials if credentials else None,
                                   request.method, request.url.path)
    limit = caller.limits.max_requests_per_minute
    rate_key = project_rate_key(caller.project_id)
    retry = limiter.hit(rate_key, limit, 60)
    if retry is not None:
        # Read again only when refusing: the count is the current use a refusal names (None
        # when the shared counter cannot be read now).
        used = limiter.current(rate_key, 60).used
        raise TooManyRequests(
            f"more than {limit} requests per minute for project '{caller.project_name}' "
            "(max_requests_per_minute); retry later", field="max_requests_per_minute",
            headers={"Retry-After": retry_after_header(retry)},
            details={"quota": "max_requests_per_minute", "limit": limit, "used": used})
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


def require_admin(caller: CallerDep) -> Caller:
    caller.require(Scope.ADMIN)
    return caller


AdminDep = Annotated[Caller, Depends(require_admin)]

