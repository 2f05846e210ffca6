"""``/healthz`` (the process answers) and ``/readyz`` (database, broker and object store are
reachable, the database's schema is this code's, and the upload validator has started; 503
naming what is down). A validator that is still starting (torch's import, its spare checks:
seconds after the API process starts) makes the API not ready, so an orchestrator sends it no
traffic until an upload costs what it will later; one whose start failed is started again by the
probe. One that is stopped but starts with the next upload (a shared server that exited idle,
``VALIDATION_WARM_START=false``) does not. Served under
``/v1`` and at the root, for probes, without an API key: the answers say which component is
down, never its address or the driver's error (those go to the log); a schema that is not
current is named with its revisions and the command that migrates it; one a newer release
migrated (a rolling deploy) stays ready, the database check's ``state`` ``schema_ahead``."""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api import crud
from api.deps import DispatcherDep, SessionFactoryDep, StoreDep, ValidatorDep
from api.errors import error_body
from api.schemas import CheckOut, HealthOut, ReadyOut
from api.validation import Validator
from persistence.schema import SchemaNotCurrent, check_schema, log_schema_ahead
from persistence.storage import StoreMisconfigured

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])

#: Seconds each readiness check may take before it counts as down.
CHECK_TIMEOUT_S = 5.0


@router.get("/healthz", response_model=HealthOut, summary="The API process is up")
def healthz() -> HealthOut:
    return HealthOut(status="ok")


async def _run_check(name: str, check: Callable[[], None]) -> CheckOut:
    try:
        with anyio.fail_after(CHECK_TIMEOUT_S):
            # abandon_on_cancel: a hung connection attempt must not hold the probe past its timeout.
            await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
    except TimeoutError:
        return CheckOut(ok=False, error=f"no answer within {CHECK_TIMEOUT_S:g} s")
    except SchemaNotCurrent as exc:
        if exc.ahead:
            # A rolling deploy migrated first: this process still serves (the migrations only
            # add); not ready here took every older API out of service at once.
            log_schema_ahead(exc)
            return CheckOut(ok=True, state="schema_ahead", error=exc.message)
        # Names revisions and the command to run, no address: the operator reads it here.
        return CheckOut(ok=False, error=exc.message)
    except StoreMisconfigured as exc:
        # Up, but refusing this deployment's bucket or keys (or none were found): an operator
        # must fix a setting, which "unreachable" hid (the log line names it).
        logger.warning("readiness: %s refuses this deployment's settings: %s", name,
                       " ".join(str(exc).split())[:500])
        return CheckOut(ok=False, error="refuses this deployment's settings (details in the "
                                        "API log)")
    except Exception as exc:
        # The error text names hosts, ports and drivers: for the log, not for any caller.
        logger.warning("readiness: %s is down: %s", name, " ".join(str(exc).split())[:500])
        return CheckOut(ok=False, error="unreachable (details in the API log)")
    return CheckOut(ok=True)


async def _validator_check(validator: Validator) -> CheckOut:
    # keep_started may start the server again (in the background) after a failed start.
    state = await anyio.to_thread.run_sync(validator.keep_started)
    if state == "starting":
        return CheckOut(ok=False, state=state,
                        error="starting (importing torch, warming up its checks); uploads wait "
                              "for it")
    if state == "failed":
        return CheckOut(ok=False, state=state,
                        error="did not start (details in the API log); starting it again")
    return CheckOut(ok=True, state=state)


@router.get(
    "/readyz",
    response_model=None,
    summary="The database, the broker and the object store are reachable; the validator started",
    responses={200: {"model": ReadyOut},
               503: {"model": ReadyOut,
                     "description": "Something is down; the body names it (and has 'error')"}},
)
async def readyz(factory: SessionFactoryDep, dispatcher: DispatcherDep,
                 store: StoreDep, validator: ValidatorDep) -> ReadyOut | JSONResponse:
    def database() -> None:
        with factory() as session:
            crud.ping(session)
            check_schema(session.get_bind().engine)

    checks: dict[str, CheckOut] = {}

    async def run(name: str, check: Callable[[], None]) -> None:
        checks[name] = await _run_check(name, check)

    async def run_validator() -> None:
        checks["validator"] = await _validator_check(validator)

    async with anyio.create_task_group() as group:
        group.start_soon(run, "database", database)
        group.start_soon(run, "broker", dispatcher.check)
        group.start_soon(run, "object_store", store.check)
        group.start_soon(run_validator)
    ordered = {name: checks[name] for name in ("database", "broker", "object_store", "validator")}
    down = [name for name, check in ordered.items() if not check.ok]
    if not down:
        return ReadyOut(status="ready", checks=ordered)
    body = ReadyOut(status="unavailable", checks=ordered).model_dump()
    message = "; ".join(f"{name}: {ordered[name].error}" for name in down)
    body.update(error_body("not_ready", f"not ready: {message}", down[0]))
    return JSONResponse(body, status_code=503)
