"""The cache: Redis when REDIS_URL is set, else an in-process cache with the same interface.

A cache is an optimisation, never a dependency: no method raises, and a Redis that is down or
frozen costs a request at most one short timeout before the cache is bypassed for a while.
In Redis every key starts with REDIS_KEY_PREFIX, so deployments sharing a Redis database never
read each other's entries.
"""

import asyncio
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio.to_thread
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from config import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Increments that could not reach Redis, replayed when it returns; beyond this many distinct
# keys the oldest are dropped and the entries' TTL bounds how long they can be stale.
MAX_PENDING_INCREMENTS = 10_000


class Cache(ABC):
    """String values with a TTL, and counters. Failures read as misses and are never raised."""

    backend: str

    @abstractmethod
    def get(self, key: str) -> str | None:
        """The value stored under `key`, or None when absent, expired or unreachable."""

    @abstractmethod
    def get_many(self, keys: Sequence[str]) -> list[str | None] | None:
        """The values under `keys` (None where absent or expired), in one round trip; None
        when the cache cannot be read."""

    async def get_many_async(self, keys: Sequence[str]) -> list[str | None] | None:
        """`get_many` for async code, awaited on the event loop: no thread-pool hop. An
        in-process cache does no I/O, so it simply reads."""
        return self.get_many(keys)

    async def get_async(self, key: str) -> str | None:
        """`get` for async code, awaited on the event loop (see `get_many_async`)."""
        values = await self.get_many_async([key])
        return values[0] if values else None

    @abstractmethod
    def set(self, key: str, value: str, ttl_seconds: int) -> None:
        """Store `value` under `key` for `ttl_seconds`; silently does nothing on failure."""

    async def set_async(self, key: str, value: str, ttl_seconds: int) -> None:
        """`set` for async code, awaited on the event loop (an in-process cache just stores)."""
        self.set(key, value, ttl_seconds)

    @abstractmethod
    def counter(self, key: str) -> int | None:
        """The counter at `key` (0 when absent), or None when the cache cannot be read."""

    @abstractmethod
    def incr(self, key: str, ttl_seconds: int) -> None:
        """Add one to the counter at `key` and keep it for `ttl_seconds` more.

        An increment that cannot be delivered now is delivered once the cache is back: at
        least once, as a timed-out one may still have reached the server.
        """

    async def incr_async(self, key: str, ttl_seconds: int) -> None:
        """`incr` for async code, awaited on the event loop (an in-process cache just adds)."""
        self.incr(key, ttl_seconds)

    @abstractmethod
    def ping(self) -> bool:
        """True when the cache answers."""

    @abstractmethod
    def close(self) -> None:
        """Release connections, if any."""

    @abstractmethod
    async def close_async(self) -> None:
        """Release what `get_many_async` opened on the running event loop, if anything; the
        app's lifespan calls it before its loop ends."""


class MemoryCache(Cache):
    """A bounded, thread-safe, in-process cache for the single-process embedded setup."""

    backend = "memory"

    def __init__(
        self, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_entries = max_entries
        self._clock = clock
        self._data: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def _get(self, key: str) -> str | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires_at, value = item
        if expires_at <= self._clock():
            del self._data[key]
            return None
        return value

    def _put(self, key: str, value: str, ttl_seconds: int) -> None:
        if key not in self._data and len(self._data) >= self._max_entries:
            now = self._clock()
            self._data = {k: item for k, item in self._data.items() if item[0] > now}
            if len(self._data) >= self._max_entries:
                # Dropping everything is always safe (only misses follow); dropping a counter
                # alone could let an old entry under a reset version be served again.
                self._data.clear()
        self._data[key] = (self._clock() + ttl_seconds, value)

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._get(key)

    def get_many(self, keys: Sequence[str]) -> list[str | None] | None:
        with self._lock:
            return [self._get(key) for key in keys]

    def set(self, key: str, value: str, ttl_seconds: int) -> None:
        with self._lock:
            self._put(key, value, ttl_seconds)

    def counter(self, key: str) -> int | None:
        with self._lock:
            value = self._get(key)
        return int(value) if value is not None else 0

    def incr(self, key: str, ttl_seconds: int) -> None:
        with self._lock:
            current = self._get(key)
            self._put(key, str(int(current or 0) + 1), ttl_seconds)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        self.clear()

    async def close_async(self) -> None:
        """Nothing here belongs to an event loop."""

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._data.clear()


class RedisCache(Cache):
    """Redis with short timeouts, no retries, and a circuit breaker while it is unreachable."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str,
        timeout_seconds: float,
        retry_interval_seconds: float = 1.0,
        warn_interval_seconds: float = 60.0,
    ) -> None:
        # redis-py's defaults (5 s timeouts, retries with backoff) make a frozen server cost
        # about a minute per call; one attempt bounded by a few tens of ms is all a cache needs.
        self._url = url
        self._options: dict[str, Any] = {
            "socket_timeout": timeout_seconds,
            "socket_connect_timeout": timeout_seconds,
            "health_check_interval": 0,
            "decode_responses": True,
        }
        self._client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **self._options)
        # Async connections belong to the event loop that opened them: the client is built
        # for the loop that first awaits it (one per worker; tests run several loops).
        self._async: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis] | None = None
        self._prefix = f"{key_prefix}:"
        self._retry_interval = retry_interval_seconds
        self._warn_interval = warn_interval_seconds
        self._lock = threading.Lock()
        self._down = False
        self._skip_until = 0.0
        self._last_warning = float("-inf")
        self._pending: dict[str, int] = {}

    def _may_try(self) -> bool:
        if not self._down:
            return True
        with self._lock:
            if not self._down:
                return True
            now = time.monotonic()
            if now < self._skip_until:
                return False
            # This caller probes; everyone else keeps bypassing until the probe is answered.
            self._skip_until = now + self._retry_interval
            return True

    def _failed(self, error: Exception) -> None:
        with self._lock:
            now = time.monotonic()
            self._down = True
            self._skip_until = now + self._retry_interval
            warn = now - self._last_warning >= self._warn_interval
            if warn:
                self._last_warning = now
        if warn:
            logger.warning(
                "Redis cache unavailable, bypassing it (retrying every %.1fs): %s: %s",
                self._retry_interval,
                type(error).__name__,
                error,
            )

    def _succeeded(self) -> None:
        if not self._down:
            return
        with self._lock:
            recovered, self._down = self._down, False
        if recovered:
            logger.info("Redis cache reachable again")

    def _replay_pending(self) -> None:
        if not self._pending:
            return
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, ttl_seconds in pending.items():
                pipe.incr(key)
                pipe.expire(key, ttl_seconds)
            pipe.execute()
        except BaseException:
            with self._lock:
                self._pending = {**pending, **self._pending}
            raise

    def _run(self, operation: Callable[[redis.Redis], T]) -> tuple[bool, T | None]:
        if not self._may_try():
            return False, None
        try:
            # Increments lost during an outage go first: no entry is read before they land.
            self._replay_pending()
            result = operation(self._client)
        except (RedisError, OSError, ValueError) as error:
            self._failed(error)
            return False, None
        self._succeeded()
        return True, result

    def get(self, key: str) -> str | None:
        key = self._prefix + key
        _, value = self._run(lambda client: _as_text(client.get(key)))
        return value

    def get_many(self, keys: Sequence[str]) -> list[str | None] | None:
        names = [self._prefix + key for key in keys]
        ok, values = self._run(lambda client: [_as_text(v) for v in client.mget(names)])
        return values if ok else None

    async def get_many_async(self, keys: Sequence[str]) -> list[str | None] | None:
        if self._pending:
            # Lost increments must land before anything is read: the sync path replays them.
            return await anyio.to_thread.run_sync(self.get_many, keys)
        if not self._may_try():
            return None
        names = [self._prefix + key for key in keys]
        try:
            values = await self._loop_client().mget(names)
        except (RedisError, OSError, ValueError) as error:
            self._failed(error)
            return None
        self._succeeded()
        return [_as_text(v) for v in values]

    async def set_async(self, key: str, value: str, ttl_seconds: int) -> None:
        if self._pending:
            await anyio.to_thread.run_sync(self.set, key, value, ttl_seconds)
            return
        if not self._may_try():
            return
        try:
            await self._loop_client().set(self._prefix + key, value, ex=ttl_seconds)
        except (RedisError, OSError, ValueError) as error:
            self._failed(error)
            return
        self._succeeded()

    def _loop_client(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        bound = self._async
        if bound is None or bound[0] is not loop:
            client = redis.asyncio.Redis.from_url(
                self._url, retry=AsyncRetry(NoBackoff(), 0), **self._options
            )
            bound = self._async = (loop, client)
        return bound[1]

    def set(self, key: str, value: str, ttl_seconds: int) -> None:
        key = self._prefix + key
        self._run(lambda client: client.set(key, value, ex=ttl_seconds))

    def counter(self, key: str) -> int | None:
        key = self._prefix + key
        ok, value = self._run(lambda client: _as_text(client.get(key)))
        if not ok:
            return None
        return int(value) if value is not None else 0

    def incr(self, key: str, ttl_seconds: int) -> None:
        key = self._prefix + key

        def increment(client: redis.Redis) -> None:
            pipe = client.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, ttl_seconds)
            pipe.execute()

        ok, _ = self._run(increment)
        if not ok:
            self._keep_pending(key, ttl_seconds)

    async def incr_async(self, key: str, ttl_seconds: int) -> None:
        if self._pending:
            # The sync path replays what is pending first.
            await anyio.to_thread.run_sync(self.incr, key, ttl_seconds)
            return
        name = self._prefix + key
        if not self._may_try():
            self._keep_pending(name, ttl_seconds)  # no I/O: no hop while Redis is down
            return
        try:
            pipe = self._loop_client().pipeline(transaction=False)
            pipe.incr(name)
            pipe.expire(name, ttl_seconds)
            await pipe.execute()
        except (RedisError, OSError, ValueError) as error:
            self._failed(error)
            self._keep_pending(name, ttl_seconds)
            return
        self._succeeded()

    def _keep_pending(self, name: str, ttl_seconds: int) -> None:
        with self._lock:
            self._pending[name] = ttl_seconds
            while len(self._pending) > MAX_PENDING_INCREMENTS:
                del self._pending[next(iter(self._pending))]

    def ping(self) -> bool:
        ok, answer = self._run(lambda client: bool(client.ping()))
        return ok and bool(answer)

    def close(self) -> None:
        self._client.close()

    async def close_async(self) -> None:
        bound = self._async
        if bound is not None and bound[0] is asyncio.get_running_loop():
            self._async = None
            await bound[1].aclose()


def redis_timeout_seconds(settings: Settings) -> float:
    """REDIS_SOCKET_TIMEOUT_MS in seconds: the connect and read timeout of every Redis client.

    One bound for every client the app (or a worker) builds, the cache, the rate limiter, the
    notice budget, enqueueing a job and the job counters, so a frozen Redis costs each call the
    same short wait before that client's fallback takes over, and one setting tunes them all.
    """
    return settings.redis_socket_timeout_ms / 1000


def key_prefix(settings: Settings) -> str:
    """The prefix of this deployment's own Redis names (the job queue, job and metric counters).

    `REDIS_KEY_PREFIX` (derived from the database when unset): two deployments sharing a Redis
    database keep their jobs and counters apart, as they keep their cache and rate limits.
    """
    return f"{settings.redis_key_prefix}:"


def _as_text(value: Any) -> str | None:
    return None if value is None else str(value)


def build_cache(settings: Settings) -> Cache:
    """Redis when REDIS_URL is set, else the in-process cache."""
    if settings.redis_url:
        return RedisCache(
            settings.redis_url,
            key_prefix=settings.redis_key_prefix,
            timeout_seconds=redis_timeout_seconds(settings),
        )
    return MemoryCache()
