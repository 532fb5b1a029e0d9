"""GET /metrics: Prometheus text for the deployment, for the holder of METRICS_TOKEN only."""

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response

import jobs
import metrics
from dependencies import DbSession, ResourcesDep, SettingsDep
from exceptions import (
    InvalidMetricsTokenError,
    MetricsDisabledError,
    MetricsNotAuthenticatedError,
    raises,
)

router = APIRouter(tags=["operations"])


@raises(MetricsDisabledError, MetricsNotAuthenticatedError, InvalidMetricsTokenError)
async def require_metrics_token(
    settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    """404 unless METRICS_TOKEN is set; then 401 without `Authorization: Bearer <it>`."""
    if settings.metrics_token is None:
        # Indistinguishable from a path that does not exist.
        raise MetricsDisabledError()
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise MetricsNotAuthenticatedError()
    expected = settings.metrics_token.get_secret_value().encode()
    if not hmac.compare_digest(token.strip().encode(), expected):
        raise InvalidMetricsTokenError()


# Not in the OpenAPI description: it is for the monitoring system, not for API clients.
@router.get(
    "/metrics",
    include_in_schema=False,
    response_class=Response,
    dependencies=[Depends(require_metrics_token)],
)
def get_metrics(session: DbSession, resources: ResourcesDep) -> Response:
    """Requests by route and status, latencies, job queue depth, job failures and notices."""
    body = metrics.render(jobs.queue_state(session, resources.runner), resources.events)
    return Response(body, media_type=metrics.CONTENT_TYPE)
