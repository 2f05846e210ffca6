"""Dependencies shared by the routes: settings, a database session, the object store, the
dispatcher and the upload validator. All of them live on ``app.state``, put there by
:func:`api.main.create_app`; nothing is a module-level global, so each app (and each test) has
its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from api.dispatch import Dispatcher
from api.validation import Validator
from persistence.settings import Settings
from persistence.storage import ObjectStore


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


def get_validator(request: Request) -> Validator:
    return request.app.state.validator  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
ValidatorDep = Annotated[Validator, Depends(get_validator)]
