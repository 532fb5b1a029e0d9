"""Liveness and readiness probes for load balancers and orchestrators."""

from typing import Literal, Self

from fastapi import APIRouter, Response, status
from pydantic import BaseModel

from dependencies import DbSession, SettingsDep
from services import health as health_service


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class ReadinessChecks(BaseModel):
    database: Literal["ok", "error"]
    cache: Literal["ok", "error", "disabled"]


class Readiness(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    checks: ReadinessChecks

    @classmethod
    def of(cls, checks: ReadinessChecks) -> Self:
        """Unavailable without the database; degraded (still serving) without Redis."""
        if checks.database == "error":
            return cls(status="unavailable", checks=checks)
        return cls(status="degraded" if checks.cache == "error" else "ok", checks=checks)


router = APIRouter(prefix="/health", tags=["operations"])


@router.get("", response_model=Liveness)
async def liveness() -> Liveness:
    """200 while the process serves requests."""
    return Liveness()


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "The database does not answer"}},
)
def readiness(session: DbSession, settings: SettingsDep, response: Response) -> Readiness:
    """Whether the database and Redis answer: 503 without the database, `degraded` without Redis."""
    ready = Readiness.of(
        ReadinessChecks(
            database=health_service.check_database(session),
            cache=health_service.check_cache(settings),
        )
    )
    if ready.status == "unavailable":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return ready
