"""The per-user change counter behind the weak ETags of GET /tasks and GET /tasks/stats, and
the cache version that makes cached answers about a user's tasks stale.

The database raises the counter: triggers on `tasks` (migration 0007) raise the owner's counter
within every statement that inserts, updates or deletes their tasks, so it commits with the
change and a reader never sees a counter older than the rows it then reads. Tag writes always
update their task's row, so they raise it too. The counter is the last lock such a statement
takes, after its task rows, which keeps one lock order everywhere.

The cache holds, per user, a version that every committed write bumps (`invalidate_after_commit`).
A cached answer (the statistics, the counter itself) is stored with the version read before the
database was, and served only while that version is still the current one: an answer computed
before a write is never served once the write's bump has landed. A write that has committed
but not yet bumped is the only window in which a reader can still see the answer before it.
"""

from dataclasses import dataclass
from functools import partial

from pydantic import BaseModel, ValidationError
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from db_config import after_commit
from db_models import UserChangeCounter
from redis_config import Cache

# Read through the table's columns: a Core statement, without the ORM's compile steps.
_COUNTER = UserChangeCounter.__table__.c
# Far longer than any entry lives: a version must never vanish while entries under it exist.
_VERSION_TTL_SECONDS = 7 * 24 * 3600
# Entries are checked against the version; the TTL only bounds how long unused ones stay.
_COUNTER_TTL_SECONDS = 3600
# Bump when the cached counter's JSON changes shape.
_COUNTER_FORMAT = 1


def current_counter(session: Session, *, owner_id: int) -> int:
    """The owner's change counter: 0 before their first change."""
    counter = session.scalar(select(_COUNTER.counter).where(_COUNTER.user_id == owner_id))
    return counter or 0


def counter_column(owner_id: int | ColumnElement[int]) -> ColumnElement[int]:
    """The owner's change counter as a column, to read it with another query's round trip
    (`owner_id` may be a bound parameter of a statement built once)."""
    counter = select(_COUNTER.counter).where(_COUNTER.user_id == owner_id).scalar_subquery()
    return func.coalesce(counter, 0)


def cache_version_key(owner_id: int) -> str:
    """The cache key of the owner's version (named for the statistics, its first user: every
    instance of a rolling upgrade must bump and read the same key)."""
    return f"stats:version:{owner_id}"


def invalidate_after_commit(session: Session, *, cache: Cache, owner_id: int) -> None:
    """Make every cached answer about the owner's tasks stale once this session's transaction
    commits.

    After the commit, not before: a reader that reads the new version must also see the
    committed rows, or it would store an old answer under the new version.
    """
    after_commit(session, partial(cache.incr, cache_version_key(owner_id), _VERSION_TTL_SECONDS))


async def invalidate_now(cache: Cache, *, owner_id: int) -> None:
    """`invalidate_after_commit` for a write that has committed already (one statement in
    autocommit), on the event loop."""
    await cache.incr_async(cache_version_key(owner_id), _VERSION_TTL_SECONDS)


class _CounterEntry(BaseModel):
    version: int
    counter: int


def _counter_key(owner_id: int) -> str:
    return f"changes:counter:{_COUNTER_FORMAT}:{owner_id}"


@dataclass(frozen=True)
class CachedCounter:
    """What the cache knows of an owner's change counter (`read_cached_counter`)."""

    owner_id: int
    # The owner's cache version; None when the cache could not be read.
    version: int | None
    # The counter, when the cache holds it at the current version; else only the database knows.
    counter: int | None

    async def store(self, cache: Cache, counter: int) -> None:
        """Store a counter just read from the database (`current_counter`), on the event loop,
        under the version read before it; not stored when the cache could not be read: a
        counter without a version can never be trusted."""
        if self.version is None:
            return
        entry = _CounterEntry(version=self.version, counter=counter).model_dump_json()
        await cache.set_async(_counter_key(self.owner_id), entry, _COUNTER_TTL_SECONDS)


async def read_cached_counter(cache: Cache, *, owner_id: int) -> CachedCounter:
    """The owner's cache version and cached counter, read on the event loop in one round trip."""
    values = await cache.get_many_async([cache_version_key(owner_id), _counter_key(owner_id)])
    if values is None:
        return CachedCounter(owner_id, None, None)
    version = int(values[0] or 0)
    try:
        entry = _CounterEntry.model_validate_json(values[1]) if values[1] else None
    except ValidationError:
        entry = None
    counter = entry.counter if entry is not None and entry.version == version else None
    return CachedCounter(owner_id, version, counter)
