"""ASGI middleware: request ids, security and rate-limit headers, the access log, last-resort 500s,
and the request body limit."""

import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY, RequestBodyLimitMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exceptions import (
    PROBLEM_MEDIA_TYPE,
    BodyTooLargeError,
    app_error_response,
    unhandled_error_response,
)
from logging_config import request_id_var, request_state_var

logger = logging.getLogger("access")

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _request_id_from(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _CLIENT_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class HttpMiddleware:
    """A pure ASGI middleware for HTTP requests: `handle_http` sees each one; anything else
    (the lifespan, websockets) passes through untouched."""

    app: ASGIApp

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle_http(scope, receive, send)

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class RequestContextMiddleware(HttpMiddleware):
    """Give every request an id (the client's, if well-formed), echo it, log one access line.

    Also the one place that stamps headers every response carries (`X-Content-Type-Options`,
    the rate-limit headers the limiter recorded), and the last resort for unexpected errors:
    handled here, the 500 still passes through the header stamping and the access line, and
    its traceback is logged once, with the request id.
    """

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = _request_id_from(scope)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = request_id_var.set(request_id)
        state_token = request_state_var.set(state)
        started = time.perf_counter()
        status_code = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status_code, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status_code = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                headers["X-Content-Type-Options"] = "nosniff"
                for name, value in state.get("rate_limit_headers", {}).items():
                    headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            if response_started:
                raise
            response = unhandled_error_response(Request(scope), exc)
            await response(scope, receive, send_with_headers)
        finally:
            duration_ms = (time.perf_counter() - started) * 1000
            logger.info(
                "%s %s %s %.1fms user=%s",
                scope["method"],
                scope["path"],
                status_code,
                duration_ms,
                state.get("user_id"),
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status_code,
                    "duration_ms": round(duration_ms, 2),
                    "user_id": state.get("user_id"),
                },
            )
            request_state_var.reset(state_token)
            request_id_var.reset(token)


# --- the request body limit -------------------------------------------------------------------


class BodyLimitMiddleware(HttpMiddleware):
    """Starlette's `RequestBodyLimitMiddleware`, its refusal sent as a `body_too_large` problem.

    Starlette counts the bytes a route reads, whether declared (`Content-Length`) or streamed
    (chunked), and refuses with 413 once they pass the limit, so no body larger than the limit
    is ever held or parsed. A router or route may set its own limit (FastAPI's `max_body_size`).
    A 413 raised while a route reads its body reaches the exception handlers like any error;
    only Starlette's own plain-text answer (a declared size over the limit) is replaced here.
    """

    def __init__(self, app: ASGIApp, max_body_size: int) -> None:
        super().__init__(RequestBodyLimitMiddleware(app, max_body_size=max_body_size))
        self.unlimited = app

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if cannot_carry_a_body(scope):
            # Nothing to count or refuse (most GETs and DELETEs): no wrapper on every message.
            await self.unlimited(scope, receive, send)
            return
        replaced = False

        async def send_as_problem(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the rest of Starlette's plain-text answer
            if message["type"] == "http.response.start" and message["status"] == 413:
                content_type = Headers(raw=message.get("headers", [])).get("content-type", "")
                if not content_type.startswith(PROBLEM_MEDIA_TYPE):
                    replaced = True
                    request = Request(scope)
                    response = app_error_response(request, BodyTooLargeError.for_request(request))
                    await response(scope, receive, send)
                    return
            await send(message)

        await self.app(scope, receive, send_as_problem)


def cannot_carry_a_body(scope: Scope) -> bool:
    """Whether the request can carry no body: no `Transfer-Encoding`, no non-zero length."""
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return False
    return True


async def refuse_declared_oversize(request: Request) -> None:
    """413 at once for a declared body over the route's limit, before any other dependency.

    Starlette only refuses such a body when the route reads it; a route that never does (a GET,
    a DELETE) would otherwise run (authenticate, count a rate limit, even change data) before
    its answer is replaced by the 413.
    """
    limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY)
    declared = request.headers.get("content-length", "")
    if isinstance(limit, int) and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(limit)
