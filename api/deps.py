"""Dependencies shared by the routes: settings, a database session, the object store, the
dispatcher, the upload validator, the caller (``CallerDep``, see :mod:`api.auth`) and the limiters.
All of them live on ``app.state``, put there by :func:`api.main.create_app`; nothing is a
module-level global, so each app (and each test) has its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from api.auth import AdminDep, Caller, CallerDep
from api.checkpoint_validation import StoredTensorsCache
from api.dispatch import Dispatcher
from api.event_feed import EventFeed
from api.limits import RateLimiter, StreamSlots
from api.services.jobs import JobServices
from api.validation import Validator
from api.validation_shares import ValidationShares
from persistence.settings import Settings
from persistence.storage import ObjectStore

__all__ = ["AdminDep", "Caller", "CallerDep", "DispatcherDep", "EventFeedDep", "JobServicesDep",
           "ProjectIdDep", "RateLimiterDep", "SessionDep", "SessionFactoryDep", "SettingsDep",
           "StoreDep", "StreamSlotsDep", "ValidationSharesDep", "ValidatorDep"]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_session_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    """A session for one request, closed (and its transaction ended) afterwards."""
    with get_session_factory(request)() as session:
        yield session


def get_store(request: Request) -> ObjectStore:
    return request.app.state.store  # type: ignore[no-any-return]


def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher  # type: ignore[no-any-return]


def get_event_feed(request: Request) -> EventFeed:
    return request.app.state.event_feed  # type: ignore[no-any-return]


def get_rate_limiter(request: Request) -> RateLimiter:
    return request.app.state.rate_limiter  # type: ignore[no-any-return]


def get_stream_slots(request: Request) -> StreamSlots:
    return request.app.state.stream_slots  # type: ignore[no-any-return]


def get_project_id(caller: CallerDep) -> str:
    """The caller's project: what per-project resources (webhooks) are filed under."""
    return caller.project_id


def get_validator(request: Request) -> Validator:
    return request.app.state.validator  # type: ignore[no-any-return]


def get_validation_shares(request: Request) -> ValidationShares:
    return request.app.state.validation_shares  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
EventFeedDep = Annotated[EventFeed, Depends(get_event_feed)]
RateLimiterDep = Annotated[RateLimiter, Depends(get_rate_limiter)]
StreamSlotsDep = Annotated[StreamSlots, Depends(get_stream_slots)]
ValidatorDep = Annotated[Validator, Depends(get_validator)]
ValidationSharesDep = Annotated[ValidationShares, Depends(get_validation_shares)]


def get_stored_tensors(request: Request) -> StoredTensorsCache:
    return request.app.state.stored_tensors  # type: ignore[no-any-return]


def get_job_services(request: Request, settings: SettingsDep, store: StoreDep, factory: SessionFactoryDep,
                     dispatcher: DispatcherDep, validator: ValidatorDep,
                     shares: ValidationSharesDep) -> JobServices:
    return JobServices(settings=settings, store=store, session_factory=factory,
                       dispatcher=dispatcher, validator=validator, validation_shares=shares,
                       stored_tensors=get_stored_tensors(request))


JobServicesDep = Annotated[JobServices, Depends(get_job_services)]
ProjectIdDep = Annotated[str, Depends(get_project_id)]
