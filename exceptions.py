"""The error hierarchy and the handlers that render every error as problem+json (RFC 9457)."""

import logging
import uuid
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from slowapi.errors import RateLimitExceeded
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"

# How long a client should wait before retrying while the database is unreachable.
DATABASE_RETRY_AFTER_SECONDS = 5


class AppError(Exception):
    """An error with an HTTP status, a stable `code` and a message safe to show the client."""

    status_code = 500
    code = "internal_error"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class BadRequestError(AppError):
    status_code = 400
    code = "bad_request"


class EmptyUpdateError(BadRequestError):
    code = "empty_update"

    def __init__(self) -> None:
        super().__init__("The update contains no fields to change")


class AuthenticationError(AppError):
    status_code = 401
    code = "not_authenticated"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail, code=code, headers={"WWW-Authenticate": "Bearer"})


class NotFoundError(AppError):
    status_code = 404
    code = "not_found"


class ConflictError(AppError):
    status_code = 409
    code = "conflict"


class PayloadTooLargeError(AppError):
    status_code = 413
    code = "file_too_large"


class BodyTooLargeError(PayloadTooLargeError):
    code = "body_too_large"

    def __init__(self, limit: int | None) -> None:
        limit_text = f" of {limit} bytes" if limit is not None else ""
        super().__init__(f"The request body is larger than the limit{limit_text}")

    @classmethod
    def for_request(cls, request: Request) -> "BodyTooLargeError":
        """The error for the body limit in force on this request (Starlette records it)."""
        limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY)
        return cls(limit if isinstance(limit, int) else None)


class UnsupportedMediaTypeError(AppError):
    status_code = 415
    code = "unsupported_file_type"


class ServiceUnavailableError(AppError):
    status_code = 503
    code = "service_unavailable"


class PreconditionFailedError(AppError):
    """If-Match named no current tag: nothing was changed; the current tag is sent back."""

    status_code = 412
    code = "precondition_failed"

    def __init__(
        self, detail: str, *, etag: str | None = None, extra: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(detail, headers={"ETag": etag} if etag else None, extra=extra)


class PreconditionRequiredError(AppError):
    status_code = 428
    code = "precondition_required"


class InvalidIdempotencyKeyError(BadRequestError):
    code = "invalid_idempotency_key"


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


class IdempotencyInProgressError(ConflictError):
    code = "idempotency_in_progress"

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(
            "A request with this Idempotency-Key is still being processed; retry shortly",
            headers={"Retry-After": str(retry_after_seconds)},
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


def _describe(errors: list[dict[str, Any]]) -> str:
    first = errors[0] if errors else None
    if first is None:
        return "The request is invalid"
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def app_error_response(request: Request, error: AppError) -> JSONResponse:
    """Render an `AppError` as its problem document."""
    return problem_response(
        request,
        error.status_code,
        code=error.code,
        detail=error.detail,
        headers=error.headers,
        extra=error.extra,
    )


async def _app_error_handler(request: Request, exc: Exception) -> JSONResponse:
    return app_error_response(request, cast(AppError, exc))


def _validation_problem(request: Request, errors: list[dict[str, Any]]) -> JSONResponse:
    return problem_response(
        request, 422, code="validation_error", detail=_describe(errors), extra={"errors": errors}
    )


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    return _validation_problem(
        request, _validation_errors(cast(RequestValidationError, exc).errors())
    )


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 401: "not_authenticated"}


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    error = cast(StarletteHTTPException, exc)
    if error.status_code == 400 and isinstance(error.__cause__, UnicodeDecodeError):
        # A JSON body that is not UTF-8 is invalid input like any other malformed JSON.
        errors = [{"loc": ["body"], "msg": "The body is not valid UTF-8", "type": "json_invalid"}]
        return _validation_problem(request, errors)
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
    return problem_response(request, status, code=code, detail=detail, headers=error.headers)


async def _rate_limited_handler(request: Request, exc: Exception) -> JSONResponse:
    error = cast(RateLimitExceeded, exc)
    headers = dict(error.headers or {})
    # Retry-After in whole seconds; the limiter sets it, this is only the floor.
    headers.setdefault("Retry-After", "1")
    return problem_response(
        request,
        429,
        code="rate_limited",
        detail=f"Rate limit exceeded ({error.detail}); retry after {headers['Retry-After']} s",
        headers=headers,
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
    return problem_response(
        request,
        503,
        code="service_unavailable",
        detail="The database is unavailable; retry shortly",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


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
    return problem_response(
        request,
        500,
        code="internal_error",
        detail=f"An unexpected error occurred; quote request id {request_id} when reporting it",
    )


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
