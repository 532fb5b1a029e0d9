"""Readiness checks of the backing services, each bounded by a short timeout."""

from functools import lru_cache
from typing import Literal

import redis
from sqlalchemy import text
from sqlalchemy.orm import Session

from config import Settings
from models import Readiness, ReadinessChecks

# Redis answers a PING in well under a millisecond; a probe must not hang on a stuck one.
REDIS_PING_TIMEOUT_SECONDS = 1.0


def check_database(session: Session) -> Literal["ok", "error"]:
    """`SELECT 1` through the pool; bounded by DB_CONNECT_TIMEOUT_SECONDS when it must connect."""
    try:
        session.execute(text("SELECT 1"))
    except Exception:
        session.rollback()
        return "error"
    return "ok"


@lru_cache(maxsize=4)
def _redis_client(url: str) -> redis.Redis:
    # One client (and connection pool) per process, reused by every probe.
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=REDIS_PING_TIMEOUT_SECONDS,
        socket_timeout=REDIS_PING_TIMEOUT_SECONDS,
    )


def check_cache(settings: Settings) -> Literal["ok", "error", "disabled"]:
    """PING the configured Redis; `disabled` when the service runs without one."""
    if settings.redis_url is None:
        return "disabled"
    try:
        _redis_client(settings.redis_url).ping()
    except (redis.RedisError, OSError):
        return "error"
    return "ok"


def readiness(session: Session, settings: Settings) -> Readiness:
    """Both checks and the overall status they add up to."""
    checks = ReadinessChecks(database=check_database(session), cache=check_cache(settings))
    return Readiness.of(checks)
