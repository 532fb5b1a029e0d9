"""Rate limits: slowapi's Limiter, named budgets per route, counters shared through Redis.

Routes opt into their own budget with `@rate_limited(...)`; every other request that carries a
valid bearer token draws from the default per-user budget of its endpoint. One app-wide
dependency, `enforce_rate_limits`, does the counting before any other dependency runs, so a
spent budget costs neither a database query nor a password hash.
"""

import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.security.base import SecurityBase
from limits import RateLimitItem
from slowapi import Limiter
from slowapi.errors import RateLimitExceeded
from starlette.concurrency import run_in_threadpool

import auth
from config import Settings
from redis_config import redis_timeout_seconds

logger = logging.getLogger(__name__)

_ROUTE_LIMITS_ATTRIBUTE = "__rate_limits__"
_BODY_READER_ATTRIBUTE = "__rate_limit_body_reader__"

RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


# --- keys: who a request is counted against ------------------------------------------------


def client_ip(request: Request) -> str:
    """The client address as the server saw it.

    Behind a proxy, uvicorn's `--proxy-headers` has already replaced the peer with the forwarded
    client, and only for the proxies in FORWARDED_ALLOW_IPS; a header any client can send
    (X-Forwarded-For) is never read here.
    """
    host = request.client.host if request.client else None
    return f"ip:{host or 'unknown'}"


def _user_id_from_token(request: Request) -> int | None:
    # The key is needed before the user is loaded: the token's signature alone decides.
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    settings: Settings = request.app.state.settings
    try:
        return auth.decode_access_token(token.strip(), settings).user_id
    except auth.InvalidTokenError:
        return None


def authenticated_user(request: Request) -> int | None:
    """The user a request authenticates as, without touching the database."""
    user_id = getattr(request.state, "user_id", None)
    return user_id if isinstance(user_id, int) else _user_id_from_token(request)


def user_or_ip(request: Request) -> str:
    """The authenticated user, else the client address."""
    user_id = authenticated_user(request)
    return f"user:{user_id}" if user_id is not None else client_ip(request)


def login_username(request: Request) -> str:
    """The account a login attempt targets, case-folded and hashed to a fixed-size key.

    The login route's body reader (see `rate_limited`) records the username before counting.
    """
    username: str = getattr(request.state, "login_username", "")
    digest = hashlib.sha256(username.casefold().encode("utf-8", "replace")).hexdigest()
    return f"username:{digest[:32]}"


# --- named budgets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteLimit:
    """A named budget: every route carrying it draws from one counter per key, whatever its URL."""

    name: str
    setting: str
    key_func: Callable[[Request], str]


REGISTER = RouteLimit("register", "rate_limit_register", client_ip)
LOGIN = RouteLimit("login", "rate_limit_login", client_ip)
LOGIN_USERNAME = RouteLimit("login_username", "rate_limit_login_username", login_username)
CREATE_TASK = RouteLimit("create_task", "rate_limit_create_task", user_or_ip)
UPLOAD = RouteLimit("upload", "rate_limit_upload", user_or_ip)
# Verification and reset e-mails: per user when signed in, else per client address.
ACCOUNT_EMAIL = RouteLimit("account_email", "rate_limit_account_email", user_or_ip)
ROUTE_LIMITS = (REGISTER, LOGIN, LOGIN_USERNAME, CREATE_TASK, UPLOAD, ACCOUNT_EMAIL)

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
BodyReader = Callable[[Request], Awaitable[None]]


def rate_limited(
    *limits: RouteLimit, body_reader: BodyReader | None = None
) -> Callable[[Endpoint], Endpoint]:
    """Give a route its own budgets in place of the default per-user one.

    A budget keyed by something in the body (the login username) needs the body read first:
    `body_reader` reads and parses it once, keeping the result on the request for the route,
    and records the key. It runs before anything is counted, so a body refused for its size
    (413) costs no budget; a body it cannot parse is still counted, and refused by the route.

    The endpoint is returned unchanged (no wrapper, no extra parameters); the app-wide
    `enforce_rate_limits` dependency reads the mark.
    """

    def mark(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, _ROUTE_LIMITS_ATTRIBUTE, limits)
        setattr(endpoint, _BODY_READER_ATTRIBUTE, body_reader)
        return endpoint

    return mark


def route_limits_of(endpoint: object) -> tuple[RouteLimit, ...] | None:
    limits: tuple[RouteLimit, ...] | None = getattr(endpoint, _ROUTE_LIMITS_ATTRIBUTE, None)
    return limits


def body_reader_of(endpoint: object) -> BodyReader | None:
    reader: BodyReader | None = getattr(endpoint, _BODY_READER_ATTRIBUTE, None)
    return reader


def dependency_calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    """Every callable a route depends on, however deeply nested."""
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from dependency_calls(dependency)


def requires_auth(dependant: Dependant) -> bool:
    """Whether a route demands credentials: it depends on a security scheme (the bearer token)."""
    return any(isinstance(call, SecurityBase) for call in dependency_calls(dependant))


# --- slowapi's private members, in one place -------------------------------------------------


class SlowapiInternals:
    """The three private members of slowapi this module relies on, and nothing else does.

    slowapi has no public API to count a request against a chosen function's limits outside
    its decorator, to read the limit it last counted, or to tell that it fell back to memory.
    `tests/test_rate_limits.py` has a canary that fails loudly when any of them changes.
    """

    @staticmethod
    def storage_dead(limiter: Limiter) -> bool:
        """Whether the limiter counts in memory because its storage failed."""
        dead: bool = limiter._storage_dead
        return dead

    @staticmethod
    def hit(limiter: Limiter, request: Request, target: Callable[..., Any]) -> None:
        """Count the request against `target`'s limits (the default ones when it has none).

        Raises:
            RateLimitExceeded: a limit is spent.
        """
        limiter._check_request_limit(request, target, False)

    @staticmethod
    def last_hit(request: Request) -> tuple[RateLimitItem, list[str]] | None:
        """The limit `hit` counted last for this request, and its identifiers."""
        current: tuple[RateLimitItem, list[str]] | None = getattr(
            request.state, "view_rate_limit", None
        )
        return current


# --- the limiter -----------------------------------------------------------------------------


def _budget_marker(name: str) -> Callable[[Request], None]:
    # slowapi registers limits against a function; one per budget gives the budget a fixed
    # scope ("endpoint" key style), so the upload budget is per user, not per task URL.
    def budget(request: Request) -> None:  # pragma: no cover - never called, only named
        del request

    budget.__name__ = budget.__qualname__ = name
    return budget


class RateLimiter:
    """slowapi's Limiter with the service's budgets, Redis counters and in-memory fallback."""

    def __init__(self, settings: Settings, *, key_prefix: str = "taskmanager") -> None:
        storage_options: dict[str, Any] = {}
        if settings.redis_url:
            # A Redis slower than the app's Redis timeout counts as down: the limiter falls back
            # to counting in memory rather than stalling requests.
            timeout = redis_timeout_seconds(settings)
            storage_options = {
                "socket_connect_timeout": timeout,
                "socket_timeout": timeout,
                # Every counter key starts with REDIS_KEY_PREFIX: deployments sharing a Redis
                # database never share a budget.
                "key_prefix": f"{settings.redis_key_prefix}:limits",
            }
        self.uses_network = settings.redis_url is not None
        self.limiter = Limiter(
            key_func=user_or_ip,
            default_limits=[settings.rate_limit_default],
            key_style="endpoint",
            strategy="fixed-window",
            storage_uri=settings.redis_url or "memory://",
            storage_options=storage_options,
            # A Redis outage must never turn into 500s: count in this process until it is back.
            in_memory_fallback_enabled=True,
            key_prefix=key_prefix,
            headers_enabled=False,
        )
        # Whether each route demands a bearer token, once per route (`route_requires_auth`).
        self._requires_auth: dict[int, tuple[object, bool]] = {}
        self._markers: dict[RouteLimit, Callable[[Request], None]] = {}
        for limit in ROUTE_LIMITS:
            marker = _budget_marker(limit.name)
            self.limiter.limit(getattr(settings, limit.setting), key_func=limit.key_func)(marker)
            self._markers[limit] = marker

    def route_requires_auth(self, route: object) -> bool:
        """Whether the route demands a bearer token; worked out on the route's first request only.

        Not at startup: FastAPI builds the routes of included routers (with the router's own
        dependencies, where the token requirement comes from) lazily, on first use.
        """
        # Keyed by identity (routes are not hashable); the route is kept, so its id stays its own.
        known = self._requires_auth.get(id(route))
        if known is None:
            dependant = getattr(route, "dependant", None)
            known = (route, dependant is not None and requires_auth(dependant))
            self._requires_auth[id(route)] = known
        return known[1]

    @property
    def storage_dead(self) -> bool:
        """Whether counting has fallen back to this process's memory."""
        return SlowapiInternals.storage_dead(self.limiter)

    def check(
        self, request: Request, endpoint: Callable[..., Any], limits: tuple[RouteLimit, ...] | None
    ) -> None:
        """Count the request against its budgets and record the headers to send.

        Raises:
            RateLimitExceeded: a budget is spent; its headers carry `Retry-After`.
        """
        targets = [endpoint] if limits is None else [self._markers[limit] for limit in limits]
        tightest: tuple[RateLimitItem, list[str], float, int] | None = None
        for target in targets:
            try:
                # Route budgets are registered on their marker; any other endpoint gets the
                # default limits, scoped to that endpoint.
                SlowapiInternals.hit(self.limiter, request, target)
            except RateLimitExceeded as exc:
                exc.headers = self._exceeded_headers(request)
                request.state.rate_limit_headers = {
                    name: exc.headers[name] for name in RATE_LIMIT_HEADERS if name in exc.headers
                }
                raise
            stats = self._stats(request)
            if stats is not None and (tightest is None or stats[3] < tightest[3]):
                tightest = stats
        if tightest is not None:
            item, _, reset, remaining = tightest
            request.state.rate_limit_headers = {
                "X-RateLimit-Limit": str(item.amount),
                "X-RateLimit-Remaining": str(max(remaining, 0)),
                "X-RateLimit-Reset": str(math.ceil(reset)),
            }

    def _stats(self, request: Request) -> tuple[RateLimitItem, list[str], float, int] | None:
        current = SlowapiInternals.last_hit(request)
        if current is None:
            return None
        item, identifiers = current
        try:
            reset, remaining = self.limiter.limiter.get_window_stats(item, *identifiers)
        except Exception:
            # Headers are a courtesy; the hit itself has already been counted.
            logger.warning("Rate limit storage failed while reading the window; no headers sent")
            return None
        return item, identifiers, float(reset), int(remaining)

    def _exceeded_headers(self, request: Request) -> dict[str, str]:
        stats = self._stats(request)
        now = time.time()
        if stats is None:
            current = SlowapiInternals.last_hit(request)
            if current is None:  # pragma: no cover - slowapi names the limit it refuses
                raise RuntimeError("slowapi refused a request without naming the limit")
            item, reset = current[0], now + current[0].get_expiry()
        else:
            item, _, reset, _ = stats
        return {
            "Retry-After": str(max(1, math.ceil(reset - now))),
            "X-RateLimit-Limit": str(item.amount),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(math.ceil(reset)),
        }


def build_rate_limiter(settings: Settings) -> RateLimiter | None:
    """The app's limiter, or None when RATE_LIMIT_ENABLED is off."""
    return RateLimiter(settings) if settings.rate_limit_enabled else None


async def enforce_rate_limits(request: Request) -> None:
    """Count the request against its route's budgets (or the default one); 429 once spent."""
    limiter: RateLimiter | None = getattr(request.app.state, "limiter", None)
    endpoint = request.scope.get("endpoint")
    route = request.scope.get("route")
    if limiter is None or endpoint is None:
        return
    # A bearer token whose user only a lookup can tell (a personal access token): the app's
    # hook finds the user first, so the request counts against that user's budgets.
    identify: Callable[[Request], Awaitable[None]] | None = getattr(
        request.app.state, "identify_caller", None
    )
    if identify is not None:
        await identify(request)
    limits = route_limits_of(endpoint)
    if limits is None:
        # The default budget covers the authenticated API (per user; a bad token counts per
        # client address); public operations endpoints such as the probes are not limited.
        if route is None or not limiter.route_requires_auth(route):
            return
    else:
        reader = body_reader_of(endpoint)
        if reader is not None:
            await reader(request)
        if LOGIN_USERNAME in limits and not getattr(request.state, "login_username", None):
            # No username in the body: nothing to count per account (the route answers 4xx).
            limits = tuple(limit for limit in limits if limit is not LOGIN_USERNAME)
    if limiter.uses_network:
        # Redis calls block: keep them off the event loop.
        await run_in_threadpool(limiter.check, request, endpoint, limits)
    else:
        limiter.check(request, endpoint, limits)
