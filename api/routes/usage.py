"""``/v1/usage``: the caller's project's usage against its limits (any key with ``read``)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CallerDep, SessionDep
from api.schemas import UsageOut
from api.services.usage import caller_usage

router = APIRouter(tags=["usage"])


@router.get("/usage", response_model=UsageOut, summary="The project's usage and limits",
            description="Stored bytes (with the reservations of active jobs and "
            "materializations, as max_stored_bytes counts them), active jobs against "
            "max_active_jobs, and the other limits: the numbers the 413 and 429 quota answers "
            "use.")
def read_usage(caller: CallerDep, session: SessionDep) -> UsageOut:
    return caller_usage(session, caller)
