"""The OpenAPI document: FastAPI's, completed once with what FastAPI cannot know.

Each route declares the errors its own code raises (`responses=error_responses(...)`) and each
dependency the errors it raises (`exceptions.raises(...)`); `route_errors` adds the ones every
route of a kind shares (401 via the bearer-token dependency, 413, 422, 429, 500, 503), and
`complete_openapi` documents them all, every code with an example built from its class. It also
adds the headers every response carries, `security: []` on public operations, and a request or
success example taken from the schema's own.
"""

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from db_config import get_db
from enums import Scope
from exceptions import (
    PROBLEM_MEDIA_TYPE,
    AppError,
    BodyTooLargeError,
    DatabaseUnavailableError,
    InsufficientScopeError,
    InternalError,
    RateLimitedError,
    ValidationFailedError,
    declared_errors,
)
from models import ErrorResponse, Problem, by_status, problem_response_doc
from query_models import documented_parameters, model_of
from rate_limit_config import RATE_LIMIT_HEADERS, dependency_calls, requires_auth, route_limits_of

OPENAPI_TAGS: list[dict[str, Any]] = [
    {
        "name": "auth",
        "description": "Register and log in; sessions, refresh tokens and logout; password "
        "change and reset, e-mail verification, account deletion; personal access tokens. "
        "**Authorize** in `/docs` logs in with a username and password (or takes a personal "
        "access token) and sends the token with every request.",
    },
    {
        "name": "tasks",
        "description": "Your tasks: create, list (filter, sort, page), read, update one or "
        "many, delete, and statistics. Another user's task is always a 404.",
    },
    {
        "name": "tags",
        "description": "Add and remove tags on a task. Tags are trimmed and lower-cased; "
        "a task has at most 20.",
    },
    {
        "name": "files",
        "description": "Attach files to a task, list, download and delete them. The content "
        "must match the file extension.",
    },
    {
        "name": "operations",
        "description": "Service status and health checks; no token needed.",
    },
]

_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# FastAPI's own 422 shape; every 422 here is a problem document instead.
_FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")
_REQUEST_ID_HEADER = {
    "description": "The request id: the client's own `X-Request-ID` when well-formed, else a "
    "generated one; problem bodies quote it as `request_id`.",
    "schema": {"type": "string", "examples": ["3f1c2a9e6b7d4e0f8a1b2c3d4e5f6a7b"]},
}
_RATE_LIMIT_HEADER_DOCS = dict(
    zip(
        RATE_LIMIT_HEADERS,
        (
            {
                "description": "Requests allowed in the current window.",
                "schema": {"type": "integer"},
            },
            {"description": "Requests left in the current window.", "schema": {"type": "integer"}},
            {
                "description": "When the current window ends (Unix time, seconds).",
                "schema": {"type": "integer"},
            },
        ),
        strict=True,
    )
)
_SECURITY_SCHEME_DESCRIPTION = (
    "Log in with a username and password (the OAuth2 password flow: **Authorize** in `/docs`), "
    "then send the token as `Authorization: Bearer <token>`. A login session has every scope."
)
PERSONAL_TOKEN_SCHEME = "PersonalAccessToken"  # noqa: S105 (a scheme name)
_PERSONAL_TOKEN_SCHEME: dict[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "description": "A personal access token (`tmpat_…`, from POST /auth/tokens), or any access "
    "token, pasted as is and sent as `Authorization: Bearer <token>`. A personal token may call "
    "the operations its scopes name, and GET /auth/me; never the other /auth operations.",
}
_PERSONAL_TOKEN_SCOPES = frozenset(str(scope) for scope in Scope)


def is_rate_limited(route: RouteContext) -> bool:
    """Whether requests to the route count against a budget (its own or the default one)."""
    return route_limits_of(route.endpoint) is not None or requires_auth(route.dependant)


def declares_scopes(dependant: Dependant) -> bool:
    """Whether a route needs a scope: a personal access token without it is a 403."""
    return any(
        bool(dependency.own_oauth_scopes) or declares_scopes(dependency)
        for dependency in dependant.dependencies
    )


def route_errors(route: RouteContext, operation: dict[str, Any]) -> list[type[AppError]]:
    """Every error the route can answer: declared by it and its dependencies, and shared."""
    errors: list[type[AppError]] = []
    calls = list(dependency_calls(route.dependant))
    for call in calls:
        errors += declared_errors(call)
    for response in route.responses.values():
        if isinstance(response, ErrorResponse):
            errors += response.errors
    if operation.get("parameters") or operation.get("requestBody"):
        errors.append(ValidationFailedError)
    if declares_scopes(route.dependant):
        # Checked by the bearer scheme declared with the scopes, or by the authentication.
        errors.append(InsufficientScopeError)
    if route.max_body_size is None:
        # Refused before anything else, whether the route reads a body or not.
        errors.append(BodyTooLargeError)
    if is_rate_limited(route):
        errors.append(RateLimitedError)
    if get_db in calls:
        errors.append(DatabaseUnavailableError)
    errors.append(InternalError)
    return errors


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` return the completed document (built once, then cached)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        schema = generate()
        if fresh:
            complete_openapi(schema, app.routes)
        return schema

    # FastAPI's documented way to extend the generated document.
    app.openapi = openapi  # type: ignore[method-assign]


def complete_openapi(schema: dict[str, Any], routes: Iterable[Any]) -> None:
    """Document every operation's errors, headers, security and examples."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.setdefault(
        "Problem",
        Problem.model_json_schema(
            ref_template="#/components/schemas/{model}", mode="serialization"
        ),
    )
    paths: dict[str, dict[str, Any]] = schema.get("paths", {})
    # Routes of included routers only exist with their include-time dependencies as contexts.
    for route in iter_route_contexts(list(routes)):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            operation = paths.get(route.path_format or "", {}).get(method.lower())
            if operation is not None:
                _document_query_models(route, operation, schemas)
                _complete_operation(route, operation, schemas)
    _drop_unreferenced(schema, _FASTAPI_ERROR_SCHEMAS)
    for scheme in components.get("securitySchemes", {}).values():
        if scheme.get("type") == "oauth2":
            scheme.setdefault("description", _SECURITY_SCHEME_DESCRIPTION)
    _offer_personal_tokens(schema)


def _document_query_models(
    route: RouteContext, operation: dict[str, Any], schemas: dict[str, Any]
) -> None:
    """Document the fields of each `query_model` dependency as FastAPI documents a query
    model's: its query parameters, after the path's and before the headers'."""
    for call in dependency_calls(route.dependant):
        model = model_of(call)
        if model is None:
            continue
        parameters, referenced = documented_parameters(model)
        wanted = list(_refs(parameters))
        while wanted:
            name = wanted.pop()
            if name not in schemas and name in referenced:
                schemas[name] = copy.deepcopy(referenced[name])
                wanted.extend(_refs(schemas[name]))
        current = operation.setdefault("parameters", [])
        at = sum(1 for parameter in current if parameter["in"] in ("path", "query"))
        current[at:at] = copy.deepcopy(parameters)


def _offer_personal_tokens(schema: dict[str, Any]) -> None:
    """Where a personal access token may be used, offer it as the other way to authenticate.

    In `/docs` that is a field of the Authorize dialog to paste a token into.
    """
    offered = False
    for path_item in schema.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in _HTTP_METHODS:
                continue
            requirements: list[dict[str, list[str]]] = operation.get("security", [])
            needed = list(
                dict.fromkeys(
                    scope
                    for requirement in requirements
                    for scopes in requirement.values()
                    for scope in scopes
                )
            )
            if (
                requirements
                and set(needed) <= _PERSONAL_TOKEN_SCOPES
                and not any(PERSONAL_TOKEN_SCHEME in requirement for requirement in requirements)
            ):
                operation["security"] = [*requirements, {PERSONAL_TOKEN_SCHEME: needed}]
                offered = True
    if offered:
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes.setdefault(PERSONAL_TOKEN_SCHEME, _PERSONAL_TOKEN_SCHEME)


def _complete_operation(
    route: RouteContext, operation: dict[str, Any], schemas: dict[str, Any]
) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    errors = by_status(route_errors(route, operation))
    for key in list(responses):
        response = responses[key]
        if int(key) >= 400 and "HTTPValidationError" in str(response.get("content", {})):
            del responses[key]
        elif int(key) >= 400 and int(key) not in errors:
            raise ValueError(f"{route.path} documents {key} without an error class for it")
    for status, group in errors.items():
        documented = problem_response_doc(tuple(group))
        existing = responses.get(str(status), {})
        # A response sent in another shape as well (readiness's 503) keeps it.
        others = {
            media_type: media
            for media_type, media in existing.get("content", {}).items()
            if media_type != PROBLEM_MEDIA_TYPE
        }
        if others:
            documented["content"] = {**others, **documented["content"]}
            documented["description"] = f"{existing['description']}; or {documented['description']}"
        responses[str(status)] = documented
    operation["responses"] = responses = dict(sorted(responses.items()))
    if not requires_auth(route.dependant):
        operation["security"] = []
    limited = is_rate_limited(route)
    for response in responses.values():
        headers = response.setdefault("headers", {})
        headers.setdefault("X-Request-ID", _REQUEST_ID_HEADER)
        if limited:
            for name, header in _RATE_LIMIT_HEADER_DOCS.items():
                headers.setdefault(name, header)
    _describe_errors(operation, errors)
    _add_examples(operation, schemas)


def _describe_errors(operation: dict[str, Any], errors: dict[int, list[type[AppError]]]) -> None:
    # The summary says what the route does; the description adds what can go wrong.
    lines = [
        f"- `{status}`: " + ", ".join(f"`{code}`" for code in dict.fromkeys(e.code for e in group))
        for status, group in errors.items()
    ]
    description = operation.get("description") or operation.get("summary", "")
    operation["description"] = (
        f"{description}\n\n**Errors** (`application/problem+json`, by `code`):\n" + "\n".join(lines)
    )


def _add_examples(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    bodies = [operation.get("requestBody", {})]
    bodies += [response for key, response in operation["responses"].items() if int(key) < 400]
    for body in bodies:
        for media in body.get("content", {}).values():
            if "example" in media or "examples" in media or "schema" not in media:
                continue
            example = _example_of(media["schema"], schemas)
            if example is not None:
                media["example"] = _in_field_order(example, media["schema"], schemas)


def _example_of(schema: dict[str, Any], schemas: dict[str, Any]) -> Any:
    """The schema's first example; for a list, a list of its item's example."""
    if "$ref" in schema:
        return _example_of(schemas.get(schema["$ref"].rsplit("/", 1)[-1], {}), schemas)
    if schema.get("examples"):
        return schema["examples"][0]
    if "example" in schema:
        return schema["example"]
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        item = _example_of(schema["items"], schemas)
        return None if item is None else [item]
    return None


def _in_field_order(value: Any, schema: dict[str, Any], schemas: dict[str, Any]) -> Any:
    # Pydantic sorts the keys of schema examples; a body reads better in field order.
    while "$ref" in schema:
        schema = schemas.get(schema["$ref"].rsplit("/", 1)[-1], {})
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_in_field_order(item, schema["items"], schemas) for item in value]
    properties = schema.get("properties")
    if not isinstance(value, dict) or not isinstance(properties, dict):
        return value
    ordered = {
        key: _in_field_order(value[key], properties[key], schemas)
        for key in properties
        if key in value
    }
    return ordered | {key: item for key, item in value.items() if key not in ordered}


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                yield item.rsplit("/", 1)[-1]
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def _drop_unreferenced(schema: dict[str, Any], names: Iterable[str]) -> None:
    schemas: dict[str, Any] = schema["components"]["schemas"]
    for name in names:
        others = {key: value for key, value in schemas.items() if key != name}
        if name in schemas and name not in set(_refs([schema["paths"], others])):
            del schemas[name]


def operation_id(route: APIRoute) -> str:
    """Operation ids are the route function names: `get_task`, `list_tasks`."""
    return route.name
