"""The error hierarchy and the handlers that render every error as problem+json (RFC 9457)."""

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar, TypeVar, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import iter_route_contexts
from slowapi.errors import RateLimitExceeded
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"

# How long a client should wait before retrying while the database is unreachable.
DATABASE_RETRY_AFTER_SECONDS = 5
# How long a client waits before retrying while the storage backend is unreachable.
STORAGE_RETRY_AFTER_SECONDS = 5

Callable_T = TypeVar("Callable_T", bound=Callable[..., Any])
_RAISES_ATTRIBUTE = "__raises__"


# The request id shown in documented examples.
EXAMPLE_REQUEST_ID = "3f1c2a9e6b7d4e0f8a1b2c3d4e5f6a7b"

_WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": "Always `Bearer`: the scheme to authenticate with.",
        "schema": {"type": "string", "examples": ["Bearer"]},
    }
}
_RATE_LIMIT_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before the limit resets.",
        "schema": {"type": "integer", "examples": [42]},
    }
}
_INSUFFICIENT_SCOPE_HEADER = {
    "WWW-Authenticate": {
        "description": "The scope the operation needs (RFC 6750, section 3.1).",
        "schema": {
            "type": "string",
            "examples": ['Bearer error="insufficient_scope", scope="tasks:write"'],
        },
    }
}
_IDEMPOTENCY_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before repeating the request.",
        "schema": {"type": "integer", "examples": [1]},
    }
}
RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "examples": [5]},
    }
}


class AppError(Exception):
    """An error with an HTTP status, a stable `code` and a message safe to show the client.

    Every concrete error is a subclass here that names its own `status_code` and `code`; call
    sites pass only the facts the message is built from, never a code. `example_args` builds the
    instance the OpenAPI document shows, so documented examples are real messages;
    `response_headers` documents the headers the error is always sent with.
    """

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    example_args: ClassVar[tuple[Any, ...]] = ()
    # The key of this error's example in the OpenAPI document: its code, unless another error
    # has that code too (each error's key is its own).
    example_name: ClassVar[str | None] = None
    response_headers: ClassVar[dict[str, dict[str, Any]]] = {}
    # True for the rare error whose request must still commit its changes: revoking a session
    # whose refresh token was replayed has to stick although the request is refused.
    commit_changes: ClassVar[bool] = False

    def __init__(
        self,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # One source of truth: each error says its own status and code.
        missing = [name for name in ("status_code", "code") if name not in cls.__dict__]
        if missing:
            raise TypeError(f"{cls.__name__} must set {' and '.join(missing)} itself")

    @classmethod
    def example(cls) -> "AppError":
        """An instance built the way the code builds one: the documented example."""
        return cls(*cls.example_args)

    @classmethod
    def example_key(cls) -> str:
        return cls.example_name or cls.code

    def problem(self, request_id: str) -> dict[str, Any]:
        """The problem document this error is sent as."""
        return {
            "type": "about:blank",
            "title": HTTPStatus(self.status_code).phrase,
            "status": self.status_code,
            "detail": self.detail,
            "code": self.code,
            "request_id": request_id,
            **self.extra,
        }


def raises(*errors: type[AppError]) -> Callable[[Callable_T], Callable_T]:
    """Declare the errors a dependency can raise: every route using it documents them."""

    def mark(dependency: Callable_T) -> Callable_T:
        setattr(dependency, _RAISES_ATTRIBUTE, (*declared_errors(dependency), *errors))
        return dependency

    return mark


def declared_errors(dependency: object) -> tuple[type[AppError], ...]:
    """The errors `raises` declared on a dependency."""
    errors: tuple[type[AppError], ...] = getattr(dependency, _RAISES_ATTRIBUTE, ())
    return errors


# --- 400 ----------------------------------------------------------------------------------


class MalformedBodyError(AppError):
    """A body that cannot be parsed at all (a form with too many fields, no boundary, ...)."""

    status_code = 400
    code = "bad_request"
    example_args = ("Too many fields. Maximum number of fields is 16.",)


class EmptyUpdateError(AppError):
    status_code = 400
    code = "empty_update"

    def __init__(self) -> None:
        super().__init__("The update contains no fields to change")


class UploadIncompleteError(AppError):
    status_code = 400
    code = "upload_incomplete"

    def __init__(self) -> None:
        super().__init__("The upload was interrupted")


class WrongPasswordError(AppError):
    status_code = 400
    code = "wrong_password"

    def __init__(self) -> None:
        super().__init__("The password is not correct")


class InvalidOrExpiredTokenError(AppError):
    """An account token (e-mail verification, password reset) that cannot be used."""

    status_code = 400
    code = "invalid_or_expired_token"

    def __init__(self) -> None:
        super().__init__("The token is unknown, already used or expired")


class InvalidIdempotencyKeyError(AppError):
    status_code = 400
    code = "invalid_idempotency_key"

    def __init__(self) -> None:
        super().__init__(
            "Idempotency-Key must be 1 to 255 visible ASCII characters, or a quoted string of them"
        )


# --- 401 ----------------------------------------------------------------------------------


class NotAuthenticatedError(AppError):
    status_code = 401
    code = "not_authenticated"
    response_headers = _WWW_AUTHENTICATE

    def __init__(self) -> None:
        super().__init__(
            "Not authenticated: send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )


class InvalidTokenError(AppError):
    status_code = 401
    code = "invalid_token"
    response_headers = _WWW_AUTHENTICATE

    def __init__(self) -> None:
        super().__init__("Invalid or expired token", headers={"WWW-Authenticate": "Bearer"})


class InvalidCredentialsError(AppError):
    status_code = 401
    code = "invalid_credentials"
    response_headers = _WWW_AUTHENTICATE

    def __init__(self) -> None:
        super().__init__("Incorrect username or password", headers={"WWW-Authenticate": "Bearer"})


class InvalidRefreshTokenError(AppError):
    status_code = 401
    code = "invalid_token"
    example_name = "invalid_refresh_token"
    response_headers = _WWW_AUTHENTICATE

    def __init__(self) -> None:
        super().__init__(
            "Invalid, expired or revoked refresh token", headers={"WWW-Authenticate": "Bearer"}
        )


class RefreshTokenReusedError(AppError):
    status_code = 401
    code = "refresh_token_reused"
    response_headers = _WWW_AUTHENTICATE
    commit_changes = True

    def __init__(self) -> None:
        super().__init__(
            "This refresh token was already used; its session is now revoked, log in again",
            headers={"WWW-Authenticate": "Bearer"},
        )


class MetricsNotAuthenticatedError(AppError):
    status_code = 401
    code = "not_authenticated"
    example_name = "metrics_not_authenticated"
    response_headers = _WWW_AUTHENTICATE

    def __init__(self) -> None:
        super().__init__(
            "Not authenticated: send Authorization: Bearer <METRICS_TOKEN>",
            headers={"WWW-Authenticate": "Bearer"},
        )


class InvalidMetricsTokenError(AppError):
    status_code = 401
    code = "invalid_token"
    example_name = "invalid_metrics_token"
    response_headers = _WWW_AUTHENTICATE

    def __init__(self) -> None:
        super().__init__("Invalid metrics token", headers={"WWW-Authenticate": "Bearer"})


# --- 403 ----------------------------------------------------------------------------------


class InsufficientScopeError(AppError):
    status_code = 403
    code = "insufficient_scope"
    example_args = (["tasks:write"],)
    response_headers = _INSUFFICIENT_SCOPE_HEADER

    def __init__(self, scopes: list[str]) -> None:
        needed = " ".join(scopes)
        super().__init__(
            f"This token lacks the scope this operation needs: {needed}",
            # RFC 6750 section 3.1: which scope the client would need.
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{needed}"'},
        )


# --- 404 ----------------------------------------------------------------------------------


class TaskNotFoundError(AppError):
    status_code = 404
    code = "task_not_found"
    example_args = (17,)

    def __init__(self, task_id: int) -> None:
        super().__init__(f"Task {task_id} not found")


class TasksNotFoundError(AppError):
    """Some of the tasks of a bulk update are missing (or someone else's)."""

    status_code = 404
    code = "task_not_found"
    example_name = "tasks_not_found"
    example_args = ([4, 9],)

    def __init__(self, missing_ids: list[int]) -> None:
        super().__init__(
            f"Tasks not found: {', '.join(map(str, missing_ids))}",
            extra={"missing_ids": missing_ids},
        )


class TagNotFoundError(AppError):
    status_code = 404
    code = "tag_not_found"
    example_args = (17, "urgent")

    def __init__(self, task_id: int, tag: str) -> None:
        super().__init__(f"Task {task_id} has no tag {tag!r}")


class StoredFileNotFoundError(AppError):
    status_code = 404
    code = "file_not_found"
    example_args = (5,)

    def __init__(self, file_id: int) -> None:
        super().__init__(f"File {file_id} not found")


class SessionNotFoundError(AppError):
    status_code = 404
    code = "session_not_found"
    example_args = (3,)

    def __init__(self, session_id: int) -> None:
        super().__init__(f"Session {session_id} not found")


class PersonalTokenNotFoundError(AppError):
    status_code = 404
    code = "token_not_found"
    example_args = (3,)

    def __init__(self, token_id: int) -> None:
        super().__init__(f"Token {token_id} not found")


class MetricsDisabledError(AppError):
    """`/metrics` without METRICS_TOKEN set: indistinguishable from a path that does not exist."""

    status_code = 404
    code = "not_found"

    def __init__(self) -> None:
        super().__init__("Not Found")


# --- 409 ----------------------------------------------------------------------------------


class DuplicateUsernameError(AppError):
    status_code = 409
    code = "duplicate_username"

    def __init__(self) -> None:
        super().__init__("Username is already taken")


class DuplicateEmailError(AppError):
    status_code = 409
    code = "duplicate_email"

    def __init__(self) -> None:
        super().__init__("Email is already registered")


class TooManyFilesError(AppError):
    status_code = 409
    code = "too_many_files"
    example_args = (20,)

    def __init__(self, limit: int) -> None:
        super().__init__(f"A task holds at most {limit} files; delete one first")


class IdempotencyInProgressError(AppError):
    status_code = 409
    code = "idempotency_in_progress"
    example_args = (1,)
    response_headers = _IDEMPOTENCY_RETRY_AFTER

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(
            "A request with this Idempotency-Key is still being processed; retry shortly",
            headers={"Retry-After": str(retry_after_seconds)},
        )


# --- 412 and 428 --------------------------------------------------------------------------

ETAG_RESPONSE_HEADER = {
    "ETag": {
        "description": "The task's current entity tag: send it in `If-Match` to retry.",
        "schema": {"type": "string", "examples": ['"3f2a9c0d1e4b5a6978c1d2e3"']},
    }
}


class PreconditionFailedError(AppError):
    """If-Match named no current tag: nothing was changed; the current tag is sent back."""

    status_code = 412
    code = "precondition_failed"
    example_args = (17, '"3f2a9c0d1e4b5a6978c1d2e3"')
    response_headers = ETAG_RESPONSE_HEADER

    def __init__(self, task_id: int, current_etag: str) -> None:
        super().__init__(
            f"Task {task_id} has changed since the ETag you sent; nothing was changed",
            headers={"ETag": current_etag},
        )


class BulkPreconditionFailedError(AppError):
    """Some tasks of a bulk update changed since the given ETags: their current tags in `conflicts`."""

    status_code = 412
    code = "precondition_failed"
    example_name = "bulk_precondition_failed"
    example_args = ([{"id": 4, "etag": '"3f2a9c0d1e4b5a6978c1d2e3"'}],)

    def __init__(self, conflicts: list[dict[str, Any]]) -> None:
        super().__init__(
            "Some tasks changed since the given ETags: "
            + ", ".join(str(conflict["id"]) for conflict in conflicts),
            extra={"conflicts": conflicts},
        )


class PreconditionRequiredError(AppError):
    status_code = 428
    code = "precondition_required"

    def __init__(self) -> None:
        super().__init__("Send If-Match with the task's ETag (read it with GET /tasks/{id})")


# --- 413 and 415 --------------------------------------------------------------------------


class BodyTooLargeError(AppError):
    status_code = 413
    code = "body_too_large"
    example_args = (1048576,)

    def __init__(self, limit: int | None) -> None:
        limit_text = f" of {limit} bytes" if limit is not None else ""
        super().__init__(f"The request body is larger than the limit{limit_text}")

    @classmethod
    def for_request(cls, request: Request) -> "BodyTooLargeError":
        """The error for the body limit in force on this request (Starlette records it)."""
        limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY)
        return cls(limit if isinstance(limit, int) else None)


class FileTooLargeError(AppError):
    status_code = 413
    code = "file_too_large"
    example_args = (10485760,)

    def __init__(self, limit: int) -> None:
        super().__init__(f"The file is larger than the limit of {limit} bytes")


class UnsupportedFileTypeError(AppError):
    """The extension is not allowed, or the content does not match it."""

    status_code = 415
    code = "unsupported_file_type"
    example_args = ("The content is not a valid .pdf file (application/pdf)",)


# --- 422 ----------------------------------------------------------------------------------


def _describe(errors: list[dict[str, Any]]) -> str:
    first = errors[0] if errors else None
    if first is None:
        return "The request is invalid"
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


class ValidationFailedError(AppError):
    """Invalid input: every violation at once in `errors`."""

    status_code = 422
    code = "validation_error"
    example_args = ([{"loc": ["body", "title"], "msg": "Field required", "type": "missing"}],)

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(_describe(errors), extra={"errors": errors})


class UploadInvalidError(AppError):
    """A malformed upload request: rendered like every other 422."""

    status_code = 422
    code = "validation_error"
    example_name = "invalid_upload"
    example_args = ("The file is empty", "empty_file")

    def __init__(self, message: str, error_type: str = "value_error") -> None:
        super().__init__(
            f"body.file: {message}",
            extra={"errors": [{"loc": ["body", "file"], "msg": message, "type": error_type}]},
        )


class TooManyTagsError(AppError):
    status_code = 422
    code = "validation_error"
    example_name = "too_many_tags"
    example_args = (21, 20)

    def __init__(self, count: int, limit: int) -> None:
        message = f"a task has at most {limit} tags; this would give it {count}"
        super().__init__(
            f"body: {message}",
            extra={"errors": [{"loc": ["body"], "msg": message, "type": "too_many_tags"}]},
        )


class WeakPasswordError(AppError):
    status_code = 422
    code = "weak_password"
    example_args = ("password", "is one of the 10,000 most common passwords")

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(
            f"body.{field}: {reason}",
            extra={"errors": [{"loc": ["body", field], "msg": reason, "type": "weak_password"}]},
        )


class IdempotencyKeyReusedError(AppError):
    """The key already stands for a different request (method, path or body)."""

    status_code = 422
    code = "idempotency_key_reused"

    def __init__(self) -> None:
        message = "this key was already used for a different request; use a new key"
        super().__init__(
            f"Idempotency-Key: {message}",
            extra={
                "errors": [
                    {"loc": ["header", "Idempotency-Key"], "msg": message, "type": self.code}
                ]
            },
        )


# --- 429, 500, 503 ------------------------------------------------------------------------


class RateLimitedError(AppError):
    status_code = 429
    code = "rate_limited"
    example_args = ("5 per 1 minute", 42)
    response_headers = _RATE_LIMIT_RETRY_AFTER

    def __init__(
        self, limit: str, retry_after: int, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(
            f"Rate limit exceeded ({limit}); retry after {retry_after} s",
            headers={**(headers or {}), "Retry-After": str(retry_after)},
        )


class InternalError(AppError):
    status_code = 500
    code = "internal_error"
    example_args = (EXAMPLE_REQUEST_ID,)

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"An unexpected error occurred; quote request id {request_id} when reporting it"
        )


class DatabaseUnavailableError(AppError):
    status_code = 503
    code = "service_unavailable"
    response_headers = RETRY_AFTER_HEADER

    def __init__(self) -> None:
        super().__init__(
            "The database is unavailable; retry shortly",
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )


class StorageUnavailableError(AppError):
    status_code = 503
    code = "service_unavailable"
    example_name = "storage_unavailable"
    response_headers = RETRY_AFTER_HEADER

    def __init__(self) -> None:
        super().__init__(
            "File storage is unavailable; try again shortly",
            headers={"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS)},
        )


class EarlyResponse(Exception):
    """A complete response decided before the route ran, such as a replayed stored result.

    Raised (from a dependency, say) so that the request's transaction rolls back and the
    route's work never starts; rendered as the response it carries.
    """

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def request_id_of(request: Request) -> str:
    """The request id the middleware assigned, or a fresh one if it never ran."""
    request_id = getattr(request.state, "request_id", None)
    if not isinstance(request_id, str):
        request_id = uuid.uuid4().hex
        request.state.request_id = request_id
    return request_id


def problem_response(
    request: Request,
    status_code: int,
    *,
    code: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    """Render one problem+json response, echoing the request id in body and header."""
    request_id = request_id_of(request)
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status_code).phrase,
        "status": status_code,
        "detail": detail,
        "code": code,
        "request_id": request_id,
        **(extra or {}),
    }
    response_headers = {**(headers or {}), "X-Request-ID": request_id}
    return JSONResponse(
        body, status_code=status_code, headers=response_headers, media_type=PROBLEM_MEDIA_TYPE
    )


def _validation_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    # Only loc/msg/type: pydantic's `input` and `ctx` may echo secrets or be unserializable.
    return [
        {
            "loc": [part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in errors
    ]


def app_error_response(request: Request, error: AppError) -> JSONResponse:
    """Render an `AppError` as its problem document."""
    request_id = request_id_of(request)
    return JSONResponse(
        error.problem(request_id),
        status_code=error.status_code,
        headers={**error.headers, "X-Request-ID": request_id},
        media_type=PROBLEM_MEDIA_TYPE,
    )


async def _app_error_handler(request: Request, exc: Exception) -> JSONResponse:
    return app_error_response(request, cast(AppError, exc))


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    errors = _validation_errors(cast(RequestValidationError, exc).errors())
    return app_error_response(request, ValidationFailedError(errors))


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 401: "not_authenticated"}


def _allowed_methods(request: Request) -> str | None:
    """Every method the requested path answers, for the `Allow` header of a 405."""
    route = request.scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if path is None:
        return None
    methods: set[str] = set()
    for candidate in iter_route_contexts(request.app.routes):
        if candidate.path_format == path and not is_method_guard(candidate):
            methods |= set(candidate.methods or ())
    return ", ".join(sorted(methods)) or None


_GUARD_ATTRIBUTE = "__method_guard__"


def method_guard() -> Callable[[], None]:
    """An endpoint answering 405: for the methods a literal path (`/tasks/stats`) lacks.

    Without it, `GET /tasks/bulk` would match `GET /tasks/{task_id}` and fail as a bad id.
    """

    def method_not_allowed() -> None:
        raise StarletteHTTPException(405)

    setattr(method_not_allowed, _GUARD_ATTRIBUTE, True)
    return method_not_allowed


def is_method_guard(route: object) -> bool:
    return bool(getattr(getattr(route, "endpoint", None), _GUARD_ATTRIBUTE, False))


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    error = cast(StarletteHTTPException, exc)
    if error.status_code == 400 and isinstance(error.__cause__, UnicodeDecodeError):
        # A JSON body that is not UTF-8 is invalid input like any other malformed JSON.
        errors = [{"loc": ["body"], "msg": "The body is not valid UTF-8", "type": "json_invalid"}]
        return app_error_response(request, ValidationFailedError(errors))
    if error.status_code == 413:
        # Only Starlette's body limit raises a 413 this way: the body passed the route's cap.
        return app_error_response(request, BodyTooLargeError.for_request(request))
    status = HTTPStatus(error.status_code)
    code = _HTTP_CODES.get(status, status.phrase.lower().replace(" ", "_").replace("-", "_"))
    if isinstance(error.detail, str) and error.detail != status.phrase:
        detail = error.detail
    elif status == HTTPStatus.NOT_FOUND:
        detail = f"No route matches {request.method} {request.url.path}"
    else:
        detail = status.description
    headers = dict(error.headers or {})
    if status == HTTPStatus.METHOD_NOT_ALLOWED and (allowed := _allowed_methods(request)):
        headers["Allow"] = allowed
    return problem_response(request, status, code=code, detail=detail, headers=headers)


async def _rate_limited_handler(request: Request, exc: Exception) -> JSONResponse:
    error = cast(RateLimitExceeded, exc)
    headers = dict(error.headers or {})
    # Retry-After in whole seconds; the limiter sets it, this is only the floor.
    retry_after = int(headers.pop("Retry-After", "1"))
    return app_error_response(
        request, RateLimitedError(str(error.detail), retry_after, headers=headers)
    )


async def _database_unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    # Never the exception text: it carries SQL, and with it possibly user data.
    cause = getattr(exc, "orig", None) or exc
    logger.warning(
        "Database unavailable on %s %s: %s",
        request.method,
        request.url.path,
        type(cause).__name__,
    )
    return app_error_response(request, DatabaseUnavailableError())


def unhandled_error_response(request: Request, exc: BaseException) -> JSONResponse:
    """Log an unexpected error with its traceback and request id; answer a bare 500 problem."""
    request_id = request_id_of(request)
    logger.error(
        "Unhandled error on %s %s (request_id=%s)",
        request.method,
        request.url.path,
        request_id,
        exc_info=exc,
        extra={"request_id": request_id},
    )
    return app_error_response(request, InternalError(request_id))


async def _unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    # Errors inside the app reach RequestContextMiddleware, which answers them with the same
    # response. Only a middleware outside it (MetricsMiddleware) can raise to here, where
    # Starlette's ServerErrorMiddleware renders this response and re-raises to the server.
    return unhandled_error_response(request, exc)


async def _early_response_handler(_request: Request, exc: Exception) -> Response:
    return cast(EarlyResponse, exc).response


def register_exception_handlers(app: FastAPI) -> None:
    """Render every error the app can raise as problem+json."""
    app.add_exception_handler(EarlyResponse, _early_response_handler)
    app.add_exception_handler(AppError, _app_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(RateLimitExceeded, _rate_limited_handler)
    for database_down in (OperationalError, DisconnectionError, PoolTimeoutError):
        app.add_exception_handler(database_down, _database_unavailable_handler)
    app.add_exception_handler(Exception, _unhandled_error_handler)
