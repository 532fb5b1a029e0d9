"""Liveness and readiness probes for load balancers and orchestrators."""

from fastapi import APIRouter, Response, status

from dependencies import CacheDep, DbSession
from models import Liveness, Readiness
from services import health as health_service

router = APIRouter(prefix="/health", tags=["operations"])


@router.get("", response_model=Liveness, summary="Liveness probe")
async def liveness() -> Liveness:
    """200 while the process serves requests."""
    return Liveness()


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "The database does not answer"}},
    summary="Readiness probe",
)
def readiness(session: DbSession, cache: CacheDep, response: Response) -> Readiness:
    """Whether the database and Redis answer: 503 without the database, `degraded` without Redis."""
    ready = health_service.readiness(session, cache)
    if ready.status == "unavailable":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return ready
