"""Liveness and readiness probes."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import SessionDep
from api.errors import error_response
from shared.broker import get_redis
from shared.queues import QUEUES
from shared.registry import live_queues
from shared.schemas import ErrorResponse, Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": ErrorResponse}})
def readyz(session: SessionDep) -> Readiness | JSONResponse:
    """The database and Redis answer, and a live worker consumes each queue."""
    checks: dict[str, bool] = {}
    try:
        session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        checks["database"] = True
    except Exception:
        checks["database"] = False
    queues: set[str] = set()
    try:
        get_redis().ping()
        checks["redis"] = True
        queues = live_queues()
    except Exception:
        checks["redis"] = False
    for queue in QUEUES:
        checks[f"worker:{queue}"] = queue in queues
    missing = [name for name, ok in checks.items() if not ok]
    if missing:
        return error_response(
            503, "not_ready", f"not ready: {', '.join(missing)}", {"checks": checks}
        )
    return Readiness(status="ready", checks=checks, missing=[])
