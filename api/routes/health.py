"""``/healthz`` (the process answers) and ``/readyz`` (database, broker and object store are
reachable; 503 naming what is down). Served under ``/v1`` and at the root, for probes."""

from __future__ import annotations

from collections.abc import Callable

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api import crud
from api.errors import error_body
from api.schemas import CheckOut, HealthOut, ReadyOut

router = APIRouter(tags=["health"])

#: Seconds each readiness check may take before it counts as down.
CHECK_TIMEOUT_S = 5.0


@router.get("/healthz", response_model=HealthOut, summary="The API process is up")
def healthz() -> HealthOut:
    return HealthOut(status="ok")


async def _run_check(check: Callable[[], None]) -> CheckOut:
    try:
        with anyio.fail_after(CHECK_TIMEOUT_S):
            # abandon_on_cancel: a hung connection attempt must not hold the probe past its timeout.
            await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
    except TimeoutError:
        return CheckOut(ok=False, error=f"no answer within {CHECK_TIMEOUT_S:g} s")
    except Exception as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        return CheckOut(ok=False, error=text[:500])
    return CheckOut(ok=True)


@router.get(
    "/readyz",
    response_model=None,
    summary="The database, the broker and the object store are reachable",
    responses={200: {"model": ReadyOut},
               503: {"description": "Something is down; the body names it"}},
)
async def readyz(request: Request) -> ReadyOut | JSONResponse:
    state = request.app.state

    def database() -> None:
        with state.session_factory() as session:
            crud.ping(session)

    checks: dict[str, CheckOut] = {}

    async def run(name: str, check: Callable[[], None]) -> None:
        checks[name] = await _run_check(check)

    async with anyio.create_task_group() as group:
        group.start_soon(run, "database", database)
        group.start_soon(run, "broker", state.dispatcher.check)
        group.start_soon(run, "object_store", state.store.check)
    ordered = {name: checks[name] for name in ("database", "broker", "object_store")}
    down = [name for name, check in ordered.items() if not check.ok]
    if not down:
        return ReadyOut(status="ready", checks=ordered)
    body = ReadyOut(status="unavailable", checks=ordered).model_dump()
    message = "; ".join(f"{name}: {ordered[name].error}" for name in down)
    body.update(error_body("not_ready", f"not ready: {message}", down[0]))
    return JSONResponse(body, status_code=503)
