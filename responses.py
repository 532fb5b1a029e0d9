"""JSON answers a sync route serializes itself, in its own thread-pool hop.

FastAPI validates and serializes what a sync (`def`) route returns after the route, in a
thread-pool hop of its own: on this stack a hop costs about as much CPU as a database
statement (docs/PERFORMANCE.md). A `Response` returned by the route skips that step, so the
busy sync routes answer through `json_response`; the OpenAPI schema still comes from the
route's `response_model`.
"""

from collections.abc import Mapping
from typing import Any

from fastapi import Response
from pydantic import TypeAdapter


def json_response(
    adapter: TypeAdapter[Any],
    content: object,
    headers: Mapping[str, str],
    *,
    status_code: int = 200,
) -> Response:
    """`content` as JSON, validated as FastAPI would (attributes of an ORM row read), with
    `headers` (those a route set on its `Response` parameter, say). Validating the response
    models a service returns costs next to nothing: an instance is taken as it is."""
    return Response(
        adapter.dump_json(adapter.validate_python(content, from_attributes=True)),
        status_code=status_code,
        headers=dict(headers),
        media_type="application/json",
    )
