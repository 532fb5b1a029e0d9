"""Task statistics: aggregated by the database, cached per user, invalidated by every write.

Each user has one cache entry per UTC date (`overdue` changes at midnight), stored with the
owner's cache version (services/changes.py): a computation reads the version before it reads
the database and stores its result with that version inside; a reader serves the entry only
while its version is the current one. The version and the entry are read together, in one
round trip.

Each entry also holds the user's change counter (services/changes.py), read from the database
with the statistics: the weak ETag of GET /tasks/stats, so a cached answer and a revalidation
need no database at all.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime

import anyio.to_thread
from pydantic import BaseModel, ValidationError
from sqlalchemy import false, func, select
from sqlalchemy.orm import Session, sessionmaker

from db_config import reading
from db_models import Task, TaskTag
from enums import Priority
from models import TaskStats
from redis_config import Cache
from services import changes as change_service

# Bump when the cached JSON changes shape, so entries written by an older release are ignored.
_ENTRY_FORMAT = 3


@dataclass(frozen=True)
class StatsResult:
    stats: TaskStats
    cache_hit: bool
    # The owner's change counter as of (or before) these statistics.
    change_counter: int


class _Entry(BaseModel):
    # The owner's version counter when the statistics were read: current or stale.
    version: int
    change_counter: int
    stats: TaskStats


def _entry_key(owner_id: int, today: date) -> str:
    return f"stats:{_ENTRY_FORMAT}:{owner_id}:{today.isoformat()}"


def utc_today() -> date:
    """Today in UTC: the day that decides `overdue`, and part of every cache key."""
    return datetime.now(UTC).date()


def compute_stats(session: Session, *, owner_id: int, today: date) -> tuple[TaskStats, int]:
    """The caller's statistics in two aggregate queries, whatever the number of tasks, and
    the owner's change counter, read along with the first (the same snapshot)."""
    # count(*), not count(id): lets PostgreSQL answer from an index alone where one covers it.
    count = func.count()
    totals = session.execute(
        select(
            count.label("total"),
            count.filter(Task.completed).label("completed"),
            count.filter(Task.completed == false(), Task.due_date < today).label("overdue"),
            *(count.filter(Task.priority == p).label(p.value) for p in Priority),
            change_service.counter_column(owner_id).label("change_counter"),
        ).where(Task.user_id == owner_id)
    ).one()
    by_tag = session.execute(
        select(TaskTag.tag, func.count())
        .where(TaskTag.user_id == owner_id)
        .group_by(TaskTag.tag)
        .order_by(TaskTag.tag)
    ).all()
    total, completed = totals.total, totals.completed
    stats = TaskStats(
        total=total,
        completed=completed,
        incomplete=total - completed,
        completion_rate=round(completed / total, 4) if total else 0.0,
        overdue=totals.overdue,
        by_priority={p: getattr(totals, p.value) for p in Priority},
        by_tag=dict(by_tag),
    )
    return stats, totals.change_counter


def _cache_keys(owner_id: int, today: date) -> list[str]:
    # The version first, then the entry: read together, in one round trip.
    return [change_service.cache_version_key(owner_id), _entry_key(owner_id, today)]


def _cached_result(cached: list[str | None] | None) -> StatsResult | None:
    """The statistics in the values read under `_cache_keys`, if their entry is current."""
    if cached is None or cached[1] is None:
        return None
    try:
        entry = _Entry.model_validate_json(cached[1])
    except ValidationError:
        return None
    if entry.version != int(cached[0] or 0):
        return None
    return StatsResult(entry.stats, True, entry.change_counter)


def _compute_and_store(
    session: Session,
    *,
    owner_id: int,
    today: date,
    cached: list[str | None] | None,
    cache: Cache,
    ttl_seconds: int,
) -> StatsResult:
    """The statistics from the database, stored under the version read in `cached` (before
    the database, so they are at least as new as it says); not stored when the cache could
    not be read, as a result without a version could never be trusted."""
    stats, changes = compute_stats(session, owner_id=owner_id, today=today)
    if cached is not None:
        entry = _Entry(version=int(cached[0] or 0), change_counter=changes, stats=stats)
        cache.set(_entry_key(owner_id, today), entry.model_dump_json(), ttl_seconds)
    return StatsResult(stats, False, changes)


def get_stats(session: Session, *, owner_id: int, cache: Cache, ttl_seconds: int) -> StatsResult:
    """The caller's statistics, from the cache when its entry is current (for sync callers)."""
    today = utc_today()
    cached = cache.get_many(_cache_keys(owner_id, today))
    return _cached_result(cached) or _compute_and_store(
        session, owner_id=owner_id, today=today, cached=cached, cache=cache, ttl_seconds=ttl_seconds
    )


async def read_stats(
    sessions: sessionmaker[Session], *, owner_id: int, cache: Cache, ttl_seconds: int
) -> StatsResult:
    """`get_stats` for the async route: the cache is read on the event loop (no thread-pool
    hop, no session); only a miss opens a read session, in one hop."""
    today = utc_today()
    cached = await cache.get_many_async(_cache_keys(owner_id, today))
    if (hit := _cached_result(cached)) is not None:
        return hit

    def compute() -> StatsResult:
        with reading(sessions) as session:
            return _compute_and_store(
                session,
                owner_id=owner_id,
                today=today,
                cached=cached,
                cache=cache,
                ttl_seconds=ttl_seconds,
            )

    return await anyio.to_thread.run_sync(compute)
