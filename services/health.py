"""Readiness checks of the backing services, each bounded by a short timeout."""

from typing import Literal

from sqlalchemy import text
from sqlalchemy.orm import Session

from models import Readiness, ReadinessChecks
from redis_config import Cache


def check_database(session: Session) -> Literal["ok", "error"]:
    """`SELECT 1` through the pool; bounded by DB_CONNECT_TIMEOUT_SECONDS when it must connect."""
    try:
        session.execute(text("SELECT 1"))
    except Exception:
        session.rollback()
        return "error"
    return "ok"


def check_cache(cache: Cache) -> Literal["ok", "error", "disabled"]:
    """PING the app's own Redis client; `disabled` when the service runs without Redis.

    The same client, and so the same REDIS_SOCKET_TIMEOUT_MS, as every cache call: a Redis the
    cache has given up on for a moment reads as `error` here too.
    """
    if cache.backend != "redis":
        return "disabled"
    return "ok" if cache.ping() else "error"


def readiness(session: Session, cache: Cache) -> Readiness:
    """Both checks and the overall status they add up to."""
    checks = ReadinessChecks(database=check_database(session), cache=check_cache(cache))
    return Readiness.of(checks)
