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

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import partial
from typing import Protocol, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import Date, Integer, String, bindparam, cast, false, func, select
from sqlalchemy.orm import Session

from db_models import Task, TaskTag
from enums import Priority
from models import TaskStats
from redis_config import Cache
from services import changes as change_service

T = TypeVar("T")


class Reader(Protocol):
    """Runs a function of a read session and answers its result (`Resources.read`)."""

    def __call__(self, work: Callable[[Session], T], /) -> Awaitable[T]: ...


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


# Built once, run with the owner and the day as parameters: building this statement (a dozen
# column expressions) cost as much CPU per request as executing it. Table columns, not ORM
# attributes: no ORM compile state either.
_TASKS = Task.__table__.c
_TAGS = TaskTag.__table__.c
_OWNER = bindparam("owner_id", type_=Integer)
_COUNT = func.count()
# "tag/count" pairs joined by "/" (a tag never contains "/"): the tag counts in the same
# statement, and so the same snapshot, as the totals.
_TAG_COUNTS = (
    select(_TAGS.tag, _COUNT.label("n"))
    .where(_TAGS.user_id == _OWNER)
    .group_by(_TAGS.tag)
    .subquery()
)
_STATS = select(
    # count(*), not count(id): lets PostgreSQL answer from an index alone where one covers it.
    _COUNT.label("total"),
    _COUNT.filter(_TASKS.completed).label("completed"),
    _COUNT.filter(
        _TASKS.completed == false(), _TASKS.due_date < bindparam("today", type_=Date)
    ).label("overdue"),
    *(_COUNT.filter(_TASKS.priority == p).label(p.value) for p in Priority),
    change_service.counter_column(_OWNER).label("change_counter"),
    select(func.aggregate_strings(_TAG_COUNTS.c.tag + "/" + cast(_TAG_COUNTS.c.n, String), "/"))
    .scalar_subquery()
    .label("by_tag"),
).where(_TASKS.user_id == _OWNER)


def _tag_counts(joined: str | None) -> dict[str, int]:
    parts = joined.split("/") if joined else []
    return dict(sorted(zip(parts[::2], map(int, parts[1::2]), strict=True)))


def compute_stats(session: Session, *, owner_id: int, today: date) -> tuple[TaskStats, int]:
    """The caller's statistics in one aggregate query, whatever the number of tasks, with the
    owner's change counter read in the same snapshot."""
    totals = session.execute(_STATS, {"owner_id": owner_id, "today": today}).one()
    total, completed = totals.total, totals.completed
    stats = TaskStats(
        total=total,
        completed=completed,
        incomplete=total - completed,
        completion_rate=round(completed / total, 4) if total else 0.0,
        overdue=totals.overdue,
        by_priority={p: getattr(totals, p.value) for p in Priority},
        by_tag=_tag_counts(totals.by_tag),
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


def _entry_to_store(
    cached: list[str | None] | None, stats: TaskStats, change_counter: int
) -> str | None:
    """The entry for statistics just computed, under the version read in `cached` (before the
    database, so they are at least as new as it says); None when the cache could not be read,
    as a result without a version could never be trusted."""
    if cached is None:
        return None
    entry = _Entry(version=int(cached[0] or 0), change_counter=change_counter, stats=stats)
    return entry.model_dump_json()


def get_stats(session: Session, *, owner_id: int, cache: Cache, ttl_seconds: int) -> StatsResult:
    """The caller's statistics, from the cache when its entry is current (for sync callers)."""
    today = utc_today()
    cached = cache.get_many(_cache_keys(owner_id, today))
    if (hit := _cached_result(cached)) is not None:
        return hit
    stats, changes = compute_stats(session, owner_id=owner_id, today=today)
    if (entry := _entry_to_store(cached, stats, changes)) is not None:
        cache.set(_entry_key(owner_id, today), entry, ttl_seconds)
    return StatsResult(stats, False, changes)


async def read_stats(read: Reader, *, owner_id: int, cache: Cache, ttl_seconds: int) -> StatsResult:
    """`get_stats` for the async route: the cache is read on the event loop (no thread-pool
    hop, no session); only a miss reads the database, through `read` (`Resources.read`), and
    stores the result on the event loop."""
    today = utc_today()
    cached = await cache.get_many_async(_cache_keys(owner_id, today))
    if (hit := _cached_result(cached)) is not None:
        return hit
    stats, changes = await read(partial(compute_stats, owner_id=owner_id, today=today))
    if (entry := _entry_to_store(cached, stats, changes)) is not None:
        await cache.set_async(_entry_key(owner_id, today), entry, ttl_seconds)
    return StatsResult(stats, False, changes)
