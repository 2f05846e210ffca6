"""``/v1/usage``: the caller's project's usage against its limits (any key with ``read``)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CallerDep, RateLimiterDep, SessionDep, StreamSlotsDep
from api.schemas import UsageOut
from api.services.usage import caller_usage

router = APIRouter(tags=["usage"])


@router.get("/usage", response_model=UsageOut, summary="The project's usage and limits",
            description="Stored bytes (with the reservations of active jobs and "
            "materializations, as max_stored_bytes counts them), active jobs against "
            "max_active_jobs, and the other limits: the numbers the 413 and 429 quota answers "
            "use; the requests counted in the current minute (this one included) and the "
            "event streams open (in the API process that answers: see event_streams).")
def read_usage(caller: CallerDep, session: SessionDep, limiter: RateLimiterDep,
               slots: StreamSlotsDep) -> UsageOut:
    return caller_usage(session, caller, limiter, slots)
