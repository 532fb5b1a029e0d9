"""Interactive docs served by the service itself, and the OpenAPI description they show.

Swagger UI and ReDoc load their JavaScript and CSS from this service (the assets ship in the
`fastapi-offline` package), so `/docs` works on machines without internet access. The OpenAPI
document is completed after FastAPI builds it, so every route, including routes added later,
gets a summary, a tag, an example and its problem+json errors without repeating them per route.
"""

import re
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from enums import Scope
from exceptions import PROBLEM_MEDIA_TYPE
from models import Problem

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"

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

_SWAGGER_UI_PARAMETERS: dict[str, Any] = {
    # Swagger UI otherwise offers to send the document to an online validator.
    "validatorUrl": None,
    "displayRequestDuration": True,
    "docExpansion": "list",
    "defaultModelsExpandDepth": 0,
}

# The docs pages may load and call this service only. ReDoc, for one, shows a logo from its
# vendor's CDN: the browser blocks it instead of leaking a request from an offline machine.
DOCS_CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'self'",
    )
)

_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_PROBLEM_REF = "#/components/schemas/Problem"
# FastAPI's own 422 shape; every 422 here is a problem document instead.
_FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")

# The `code` values each error status carries, unless a rule below narrows them by path.
_DEFAULT_CODES: dict[int, tuple[str, ...]] = {
    400: ("bad_request",),
    401: ("not_authenticated", "invalid_token"),
    403: ("insufficient_scope",),
    404: ("task_not_found",),
    409: ("conflict",),
    412: ("precondition_failed",),
    413: ("body_too_large",),
    415: ("unsupported_file_type",),
    422: ("validation_error",),
    428: ("precondition_required",),
    429: ("rate_limited",),
    500: ("internal_error",),
    503: ("service_unavailable",),
}
_PATH_CODES: list[tuple[int, re.Pattern[str], tuple[str, ...]]] = [
    (400, re.compile(r"^/tasks/(bulk|\{task_id\})$"), ("empty_update",)),
    (400, re.compile(r"^/auth/(password|me)$"), ("wrong_password",)),
    (400, re.compile(r"^/auth/(verify-email|password-reset)$"), ("invalid_or_expired_token",)),
    (401, re.compile(r"^/auth/login$"), ("invalid_credentials",)),
    (400, re.compile(r"^/auth/login$"), ("bad_request",)),
    (401, re.compile(r"^/auth/refresh$"), ("invalid_token", "refresh_token_reused")),
    (404, re.compile(r"^/auth/sessions/"), ("session_not_found",)),
    (404, re.compile(r"^/auth/tokens/"), ("token_not_found",)),
    (
        422,
        re.compile(r"^/auth/(register|password|password-reset)$"),
        ("validation_error", "weak_password"),
    ),
    (409, re.compile(r"^/auth/register$"), ("duplicate_username", "duplicate_email")),
    (404, re.compile(r"^/files/"), ("file_not_found",)),
    (404, re.compile(r"/files/\{"), ("task_not_found", "file_not_found")),
    (404, re.compile(r"/tags/\{"), ("task_not_found", "tag_not_found")),
    (409, re.compile(r"/files$"), ("too_many_files",)),
    (413, re.compile(r"/files$"), ("file_too_large",)),
]
# Codes an operation can answer because of a request header it accepts.
_HEADER_CODES: dict[str, dict[int, tuple[str, ...]]] = {
    "idempotency-key": {
        400: ("invalid_idempotency_key",),
        409: ("idempotency_in_progress",),
        422: ("idempotency_key_reused",),
    },
}
_EXAMPLE_DETAILS = {
    "bad_request": "The body could not be parsed",
    "empty_update": "The update contains no fields to change",
    "wrong_password": "The password is not correct",
    "invalid_or_expired_token": "The token is unknown, already used or expired",
    "refresh_token_reused": "This refresh token was already used; its session is now revoked, "
    "log in again",
    "insufficient_scope": "This token lacks the scope this operation needs: tasks:write",
    "session_not_found": "Session 12 not found",
    "token_not_found": "Token 3 not found",
    "weak_password": "body.password: is one of the 10,000 most common passwords",
    "not_authenticated": "Not authenticated: send Authorization: Bearer <token>",
    "invalid_token": "Invalid or expired token",
    "invalid_credentials": "Incorrect username or password",
    "task_not_found": "Task 17 not found",
    "tag_not_found": "Task 17 has no tag 'urgent'",
    "file_not_found": "File 5 not found",
    "duplicate_username": "Username is already taken",
    "duplicate_email": "Email is already registered",
    "too_many_files": "Task 17 already has 20 files",
    "file_too_large": "The file is larger than 10485760 bytes",
    "body_too_large": "The request body is larger than the limit of 1048576 bytes",
    "unsupported_file_type": "The content of 'notes.pdf' is not a PDF document",
    "validation_error": "body.title: String should have at least 1 character",
    "rate_limited": "Rate limit exceeded: 5 per 1 minute",
    "service_unavailable": "The database is unavailable; try again shortly",
    "internal_error": "An unexpected error occurred; quote request id "
    "3f1c2a9e6b7d4e0f8a1b2c3d4e5f6a7b when reporting it",
    "precondition_failed": "Task 17 has changed since the ETag you sent; nothing was changed",
    "precondition_required": "Send If-Match with the task's ETag (read it with GET /tasks/{id})",
    "invalid_idempotency_key": "Idempotency-Key must be 1 to 255 visible ASCII characters, "
    "or a quoted string of them",
    "idempotency_in_progress": "A request with this Idempotency-Key is still being processed; "
    "retry shortly",
    "idempotency_key_reused": "Idempotency-Key: this key was already used for a different "
    "request; use a new key",
}
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "Always `Bearer`: the scheme to authenticate with.",
            "schema": {"type": "string", "examples": ["Bearer"]},
        }
    },
    429: {
        "Retry-After": {
            "description": "Seconds to wait before the limit resets.",
            "schema": {"type": "integer", "examples": [42]},
        }
    },
}
_REQUEST_ID_HEADER = {
    "description": "The request id: the client's own `X-Request-ID` when well-formed, else a "
    "generated one; problem bodies quote it as `request_id`.",
    "schema": {"type": "string", "examples": ["3f1c2a9e6b7d4e0f8a1b2c3d4e5f6a7b"]},
}
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


def install_docs(app: FastAPI) -> None:
    """Serve `/docs` and `/redoc` from bundled assets and complete the OpenAPI document.

    The app must be created with `docs_url=None, redoc_url=None` (FastAPI's own pages load
    their assets from a CDN).
    """
    app.mount(
        ASSETS_URL,
        StaticFiles(packages=[("fastapi_offline", "static")]),
        name="docs-assets",
    )
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url or f"{DOCS_URL}/oauth2-redirect"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return _with_policy(
            get_swagger_ui_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=f"{app.title} - Swagger UI",
                swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                oauth2_redirect_url=f"{root}{oauth2_redirect_url}",
                swagger_ui_parameters=_SWAGGER_UI_PARAMETERS,
            )
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return _with_policy(get_swagger_ui_oauth2_redirect_html())

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return _with_policy(
            get_redoc_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                with_google_fonts=False,
            )
        )

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = app.openapi_schema
        if schema is None:
            # Builds the document once (the generator caches it on the app); completed in place.
            schema = generate()
            complete_openapi(schema)
        return schema

    # FastAPI's documented way to extend the generated document.
    app.openapi = openapi  # type: ignore[method-assign]


def _with_policy(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CONTENT_SECURITY_POLICY
    return page


def complete_openapi(schema: dict[str, Any]) -> None:
    """Give every operation a summary, a tag, examples and documented problem+json errors."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.setdefault(
        "Problem",
        Problem.model_json_schema(
            ref_template="#/components/schemas/{model}", mode="serialization"
        ),
    )
    for path, method, operation in _operations(schema):
        _summarize(operation, path, method)
        _tag(operation, path)
        _document_errors(operation, path, method)
        _describe_errors(operation)
        _add_examples(operation, schemas)
        for response in operation["responses"].values():
            response.setdefault("headers", {}).setdefault("X-Request-ID", _REQUEST_ID_HEADER)
    _drop_unreferenced(schema, _FASTAPI_ERROR_SCHEMAS)
    for scheme in components.get("securitySchemes", {}).values():
        if scheme.get("type") == "oauth2":
            scheme.setdefault("description", _SECURITY_SCHEME_DESCRIPTION)
    _offer_personal_tokens(schema)


def _offer_personal_tokens(schema: dict[str, Any]) -> None:
    """Where a personal access token may be used, offer it as the other way to authenticate.

    In `/docs` that is a field of the Authorize dialog to paste a token into.
    """
    offered = False
    for _, _, operation in _operations(schema):
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


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, path_item in schema.get("paths", {}).items():
        for method, operation in path_item.items():
            if method in _HTTP_METHODS:
                yield path, method, operation


def _summarize(operation: dict[str, Any], path: str, method: str) -> None:
    # Without `summary=`, FastAPI titles the function name ("Read Me"); the first line of the
    # docstring says better what the route does.
    docstring = operation.get("description", "").strip()
    generated = _name_summary(operation.get("operationId", ""), path, method)
    if docstring and operation.get("summary") in (None, generated):
        # One line, first clause: the details stay in the description.
        first_line = docstring.splitlines()[0]
        operation["summary"] = re.split(r"; | \(|\. ", first_line)[0].strip().rstrip(".")
    operation.setdefault("summary", generated or f"{method.upper()} {path}")
    if not docstring:
        operation["description"] = operation["summary"]


def _name_summary(operation_id: str, path: str, method: str) -> str | None:
    """The summary FastAPI derives from the function name, recovered from the operation id."""
    suffix = re.sub(r"\W", "_", path) + f"_{method}"
    if not operation_id.endswith(suffix) or len(operation_id) == len(suffix):
        return None
    return operation_id.removesuffix(suffix).replace("_", " ").title()


def _tag(operation: dict[str, Any], path: str) -> None:
    segments = [segment for segment in path.split("/") if segment]
    if "tags" in segments:
        operation["tags"] = ["tags"]
    elif "files" in segments:
        operation["tags"] = ["files"]
    elif not operation.get("tags"):
        known = {tag["name"] for tag in OPENAPI_TAGS}
        first = segments[0] if segments else ""
        operation["tags"] = [first if first in known else "operations"]


def _codes(status: int, path: str, method: str) -> tuple[str, ...]:
    for rule_status, pattern, codes in _PATH_CODES:
        if rule_status == status and pattern.search(path):
            return codes
    if status == 400 and method != "patch":
        # Only an update can be empty; elsewhere a 400 is a body that cannot be parsed.
        return ("bad_request",)
    return _DEFAULT_CODES.get(status, (HTTPStatus(status).phrase.lower().replace(" ", "_"),))


def _header_codes(operation: dict[str, Any], status: int) -> tuple[str, ...]:
    headers = {
        parameter.get("name", "").lower()
        for parameter in operation.get("parameters", [])
        if parameter.get("in") == "header"
    }
    return tuple(
        code
        for header, by_status in _HEADER_CODES.items()
        if header in headers
        for code in by_status.get(status, ())
    )


def _document_errors(operation: dict[str, Any], path: str, method: str) -> None:
    responses: dict[str, Any] = operation["responses"]
    if operation.get("security"):
        responses.setdefault("401", {})
    if operation.get("tags") != ["operations"]:
        # Every route but the operational ones is rate limited (per IP or per user).
        responses.setdefault("429", {})
    responses.setdefault("500", {})
    for key, response in responses.items():
        if not key.isdigit() or int(key) < 400:
            continue
        status = int(key)
        codes = _codes(status, path, method) + _header_codes(operation, status)
        phrase = HTTPStatus(status).phrase
        response["description"] = f"{phrase}: " + ", ".join(f"`{code}`" for code in codes)
        response["content"] = {
            PROBLEM_MEDIA_TYPE: {
                "schema": {"$ref": _PROBLEM_REF},
                "examples": {code: _problem_example(status, code, path) for code in codes},
            }
        }
        if status in _ERROR_HEADERS:
            response.setdefault("headers", {}).update(_ERROR_HEADERS[status])


def _problem_example(status: int, code: str, path: str) -> dict[str, Any]:
    phrase = HTTPStatus(status).phrase
    value: dict[str, Any] = {
        "type": "about:blank",
        "title": phrase,
        "status": status,
        "detail": _EXAMPLE_DETAILS.get(code, phrase),
        "code": code,
        "request_id": "3f1c2a9e6b7d4e0f8a1b2c3d4e5f6a7b",
    }
    if code == "task_not_found" and path.endswith("/bulk"):
        value["detail"] = "Tasks 4, 9 not found"
        value["missing_ids"] = [4, 9]
    if code == "precondition_failed" and path.endswith("/bulk"):
        value["detail"] = "Some tasks changed since the given ETags: 4"
        value["conflicts"] = [{"id": 4, "etag": '"3f2a9c0d1e4b5a6978c1d2e3"'}]
    if code == "idempotency_key_reused":
        value["errors"] = [
            {
                "loc": ["header", "Idempotency-Key"],
                "msg": "this key was already used for a different request; use a new key",
                "type": "idempotency_key_reused",
            }
        ]
    if code == "weak_password":
        field = "password" if path == "/auth/register" else "new_password"
        value["detail"] = f"body.{field}: is one of the 10,000 most common passwords"
        value["errors"] = [
            {
                "loc": ["body", field],
                "msg": "is one of the 10,000 most common passwords",
                "type": "weak_password",
            }
        ]
    if code == "validation_error":
        value["errors"] = [
            {
                "loc": ["body", "title"],
                "msg": "String should have at least 1 character",
                "type": "string_too_short",
            }
        ]
    return {"summary": code, "value": value}


def _describe_errors(operation: dict[str, Any]) -> None:
    # The summary line says what the route does; the description adds what can go wrong.
    lines = []
    for key, response in sorted(operation["responses"].items()):
        if key.isdigit() and int(key) >= 400:
            codes = response["content"][PROBLEM_MEDIA_TYPE]["examples"]
            lines.append(f"- `{key}`: " + ", ".join(f"`{code}`" for code in codes))
    if lines and "**Errors**" not in operation["description"]:
        operation["description"] += (
            "\n\n**Errors** (`application/problem+json`, by `code`):\n" + "\n".join(lines)
        )


def _add_examples(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    bodies = [operation.get("requestBody", {})]
    bodies += [
        response
        for key, response in operation["responses"].items()
        if key.isdigit() and int(key) < 400
    ]
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
