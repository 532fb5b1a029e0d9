"""Completion notices: the per-user hourly cap.

`allowed_notices(notices, settings)` keeps the notices a user's budget still allows
(`NOTICE_LIMIT_PER_HOUR` in any sliding hour) and logs how many it dropped. The count is shared
by every worker and instance through Redis when REDIS_URL is set (under REDIS_KEY_PREFIX), and
kept in this process otherwise or while Redis fails. The notices themselves are sent by outbox
jobs (`jobs.py`), off the request path.
"""

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from config import Settings
from redis_config import redis_timeout_seconds

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 3600
# Users whose recent sends are remembered in memory; beyond this the oldest are forgotten.
MAX_REMEMBERED_USERS = 100_000


class Notice(Protocol):
    @property
    def user_id(self) -> int: ...


N = TypeVar("N", bound=Notice)


# --- the cap ------------------------------------------------------------------------------


class MemoryNoticeBudget:
    """Per-user send times of the last hour, in this process; thread-safe."""

    def __init__(
        self,
        *,
        window_seconds: float = WINDOW_SECONDS,
        max_users: int = MAX_REMEMBERED_USERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window_seconds
        self._max_users = max_users
        self._clock = clock
        self._sent: dict[int, deque[float]] = {}
        self._lock = threading.Lock()

    def take(self, user_id: int, wanted: int, limit: int) -> int:
        """Reserve up to `wanted` sends for `user_id` within `limit` per window; the number granted."""
        with self._lock:
            now = self._clock()
            sent = self._sent.pop(user_id, None) or deque()
            while sent and sent[0] <= now - self._window:
                sent.popleft()
            granted = max(0, min(wanted, limit - len(sent)))
            sent.extend([now] * granted)
            if sent:
                # Re-inserted last: the dict's order is the order of recent use.
                self._sent[user_id] = sent
                while len(self._sent) > self._max_users:
                    del self._sent[next(iter(self._sent))]
            return granted


# One sorted set per user: a member per notice sent, scored by the time it went out (the
# server's clock, the same for every instance). Atomic, so concurrent senders never overshoot.
_TAKE_SCRIPT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window_ms = tonumber(ARGV[1]) * 1000
local limit = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - window_ms)
local used = redis.call('ZCARD', KEYS[1])
local granted = math.max(0, math.min(wanted, limit - used))
for i = 1, granted do
    redis.call('ZADD', KEYS[1], now_ms, ARGV[4] .. ':' .. i)
end
if granted > 0 then
    redis.call('PEXPIRE', KEYS[1], window_ms)
end
return granted
"""


class NoticeBudget:
    """The per-user hourly budget: in Redis when configured, else (or while it fails) in memory."""

    def __init__(
        self,
        *,
        redis_url: str | None,
        key_prefix: str,
        timeout_seconds: float,
        warn_interval_seconds: float = 60.0,
    ) -> None:
        self.memory = MemoryNoticeBudget()
        self._warn_interval = warn_interval_seconds
        self._last_warning = float("-inf")
        self._prefix = f"{key_prefix}:notices:"
        self._client: redis.Redis | None = None
        if redis_url:
            self._client = redis.Redis.from_url(
                redis_url,
                # A call made by a job: it delays no request, but must not hang either.
                socket_timeout=timeout_seconds,
                socket_connect_timeout=timeout_seconds,
                retry=Retry(NoBackoff(), 0),
            )
        self._script = self._client.register_script(_TAKE_SCRIPT) if self._client else None

    def key(self, user_id: int) -> str:
        return f"{self._prefix}{user_id}"

    def take(self, user_id: int, wanted: int, limit: int) -> int:
        """How many of `wanted` notices `user_id` may be sent now; those are counted as sent."""
        if self._script is None:
            return self.memory.take(user_id, wanted, limit)
        try:
            granted = self._script(
                keys=[self.key(user_id)],
                args=[WINDOW_SECONDS, limit, wanted, uuid.uuid4().hex],
            )
            return int(granted)
        except (RedisError, OSError) as error:
            # Counting in this process still caps what this process sends.
            now = time.monotonic()
            if now - self._last_warning >= self._warn_interval:
                self._last_warning = now
                logger.warning(
                    "Notice counter unavailable in Redis, counting in this process: %s",
                    type(error).__name__,
                    extra={"event": "notice_budget_fallback"},
                )
            return self.memory.take(user_id, wanted, limit)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


_budgets: dict[tuple[str | None, str, float], NoticeBudget] = {}
_budgets_lock = threading.Lock()


def notice_budget(settings: Settings) -> NoticeBudget:
    """The process-wide budget for these settings' Redis, key prefix and Redis timeout."""
    timeout = redis_timeout_seconds(settings)
    key = (settings.redis_url, settings.redis_key_prefix, timeout)
    with _budgets_lock:
        budget = _budgets.get(key)
        if budget is None:
            budget = _budgets[key] = NoticeBudget(
                redis_url=settings.redis_url,
                key_prefix=settings.redis_key_prefix,
                timeout_seconds=timeout,
            )
        return budget


def reset_notice_budgets() -> None:
    """Forget every count this process keeps and close its Redis connections (tests, reloads)."""
    with _budgets_lock:
        budgets = list(_budgets.values())
        _budgets.clear()
    for budget in budgets:
        budget.close()


def allowed_notices(notices: Sequence[N], settings: Settings) -> list[N]:
    """The notices within each user's hourly budget, in order; the rest are dropped and logged."""
    limit = settings.notice_limit_per_hour
    by_user: dict[int, list[N]] = {}
    for notice in notices:
        by_user.setdefault(notice.user_id, []).append(notice)
    budget = notice_budget(settings)
    allowed: list[N] = []
    for user_id, wanted in by_user.items():
        granted = budget.take(user_id, len(wanted), limit) if limit > 0 else 0
        allowed.extend(wanted[:granted])
        dropped = len(wanted) - granted
        if dropped:
            logger.warning(
                "Dropped %d completion notice(s) for user %s: NOTICE_LIMIT_PER_HOUR (%d) reached",
                dropped,
                user_id,
                limit,
                extra={"event": "notices_dropped", "user_id": user_id, "dropped": dropped},
            )
    keep = {id(notice) for notice in allowed}
    return [notice for notice in notices if id(notice) in keep]
