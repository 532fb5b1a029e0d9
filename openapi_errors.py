"""OpenAPI: document the errors routes share, derived from what each route really depends on.

Listing 401/429/503 by hand on every route drifts; this reads each route's dependencies once,
when the schema is generated, and adds the problem responses it can really produce.
"""

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from db_config import get_db
from models import error_responses
from rate_limit_config import dependency_calls, requires_auth, route_limits_of

_PROBLEM_MEDIA_TYPE = "application/problem+json"
_PROBLEM_SCHEMA = {"$ref": "#/components/schemas/Problem"}


def _declares_scopes(dependant: Dependant) -> bool:
    """Whether a route needs a scope: a personal access token without it is a 403."""
    return any(
        bool(dependency.own_oauth_scopes) or _declares_scopes(dependency)
        for dependency in dependant.dependencies
    )


def _shared_statuses(route: RouteContext, operation: dict[str, Any]) -> list[int]:
    calls = list(dependency_calls(route.dependant))
    statuses = []
    if requires_auth(route.dependant):
        statuses += [401, 429]
    if _declares_scopes(route.dependant):
        statuses.append(403)
    if route_limits_of(route.endpoint) is not None:
        statuses.append(429)
    if operation.get("parameters") or operation.get("requestBody"):
        statuses.append(422)
    if operation.get("requestBody"):
        # A body the server cannot even parse (a broken multipart stream, say), or one over
        # MAX_BODY_BYTES (an upload documents its own 413).
        statuses += [400, 413]
    if get_db in calls:
        statuses.append(503)
    return statuses


# For routes without a 400 of their own, the only one left is a body that cannot be parsed.
_DESCRIPTIONS = {400: "The body could not be parsed (`bad_request`)"}


def _problem_response(status: int) -> dict[str, Any]:
    description: str = _DESCRIPTIONS.get(status) or error_responses(status)[status]["description"]
    return {
        "description": description,
        "content": {_PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_SCHEMA}},
    }


def _document(schema: dict[str, Any], routes: list[Any]) -> None:
    paths: dict[str, dict[str, Any]] = schema.get("paths", {})
    # Routes of included routers only exist with their include-time dependencies as contexts.
    for route in iter_route_contexts(routes):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            operation = paths.get(route.path_format or "", {}).get(method.lower())
            if operation is None:
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for status in _shared_statuses(route, operation):
                documented = responses.get(str(status))
                # FastAPI's default 422 describes its own error shape, not our problem+json.
                if documented is None or "HTTPValidationError" in str(documented):
                    responses[str(status)] = _problem_response(status)
            for code, response in responses.items():
                content = response.get("content", {})
                if code[:1] in ("4", "5") and _PROBLEM_MEDIA_TYPE in content:
                    # Errors are only ever sent as problem+json, and always in the Problem shape.
                    response["content"] = {_PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_SCHEMA}}


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` document each route's shared error responses."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        schema = generate()
        if fresh:
            _document(schema, app.routes)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
