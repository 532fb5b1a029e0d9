"""What a running app (or worker) uses, built once from its settings and closed with it.

`Resources(settings)` holds the engine and its session factory (and, on PostgreSQL, the async
driver's engine for the busiest reads, `read`, and for writes of one statement, `write_alone`),
the cache, the storage for attachments, the deployment's event counters and, once started, the job runner. The app's
lifespan builds one from the app's settings and keeps it in `app.state.resources`; request
dependencies read it from there; background work and jobs receive it as an argument; a worker
process (`worker.py`) builds its own. Nothing here connects anywhere until it is first used.

Every session made by `sessions` carries the resources in `session.info`, so work committed by
that session (the outbox's jobs) reaches this app's runner and no other.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio.to_thread
from sqlalchemy import Connection, Engine, Executable, Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session, sessionmaker

import storage as storage_backends
from config import Settings
from db_config import build_async_engine, build_engine, read_only, reading
from exceptions import DatabaseUnavailableError
from metrics import EventCounters, build_event_counters
from redis_config import Cache, MemoryCache, build_cache
from services.users import RecentUsers
from single_flight import SingleFlight

if TYPE_CHECKING:  # services.tasks imports this module (through outbox)
    from services.tasks import CountedTotal

T = TypeVar("T")

# The key of `session.info` under which a session finds the resources it was made by.
SESSION_INFO_KEY = "resources"


# The SQLSTATE classes psycopg2 raises as OperationalError (a 503 for the app), which asyncpg's
# errors reach SQLAlchemy without: connection exception, insufficient resources, operator
# intervention (a statement timeout, a shutdown), system error.
_UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "58"})
# How many list totals a process keeps (each a short key and two numbers).
LIST_TOTALS_KEPT = 10_000


def _means_unavailable(error: DBAPIError) -> bool:
    if error.connection_invalidated:
        return True
    state = getattr(error.orig, "sqlstate", None)
    return isinstance(state, str) and state[:2] in _UNAVAILABLE_SQLSTATE_CLASSES


@contextmanager
def _unavailable_as_503() -> Iterator[None]:
    """An unreachable database, a connection lost or a statement timed out on the async
    driver raise `DatabaseUnavailableError` (a 503), as psycopg2's OperationalError does."""
    try:
        yield
    except DBAPIError as error:
        if not _means_unavailable(error):
            raise
        raise DatabaseUnavailableError() from error
    except OSError as error:  # refused or timed out before any DBAPI connection existed
        raise DatabaseUnavailableError() from error


class JobSubmitter(Protocol):
    """What the outbox and the metrics need from a job runner (see `jobs.Runner`)."""

    def submit(self, job_ids: Sequence[int]) -> None: ...

    def queued(self) -> int | None: ...


class Resources:
    """The engine, sessions, cache, storage, counters and user memory of one app or worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: Engine = build_engine(settings)
        # The same database through the async driver, for `read` (None: reads take a hop).
        self.async_engine: AsyncEngine | None = build_async_engine(settings)
        self.sessions: sessionmaker[Session] = sessionmaker(
            bind=self.engine,
            expire_on_commit=False,
            autoflush=False,
            info={SESSION_INFO_KEY: self},
        )
        self.cache: Cache = build_cache(settings)
        self.storage: storage_backends.Storage = storage_backends.build_storage(settings)
        self.events: EventCounters = build_event_counters(settings)
        # Who authenticated lately, so most requests need no user query (this process only).
        self.recent_users = RecentUsers(settings.user_cache_seconds)
        # The totals of lists, each with the change counter it was counted at (this process
        # only: exact while the counter holds, so no instance needs another's; a round trip to
        # Redis cost a list more than a lookup here).
        self.list_totals = MemoryCache(max_entries=LIST_TOTALS_KEPT)
        # The counts of list totals going on, by total and the counter its page was read at:
        # the lists that need the same count at once share it (after a write, a burst of them
        # would otherwise all count the same rows together).
        self.list_counts: SingleFlight[tuple[str, int], CountedTotal] = SingleFlight()
        # Set by whoever runs the jobs (the app's lifespan, a worker, a test).
        self.runner: JobSubmitter | None = None

    def submit_jobs(self, job_ids: Sequence[int]) -> None:
        """Hand committed job ids to the runner; without one (a command-line tool), the sweep
        of a running service finds them."""
        if self.runner is not None:
            self.runner.submit(job_ids)

    async def read(self, work: Callable[[Session], T]) -> T:
        """Run `work` with a session that only reads (no transaction on PostgreSQL), and
        return what it returns.

        On the async driver when there is one: `work` runs on the event loop, each statement
        awaited, with no thread-pool hop. Otherwise (SQLite, `DB_ASYNC_READS=false`, or sessions
        rebound to a connection or engine of a caller's, whose transaction the async pool
        could not see) in one hop, in a `reading` session. `work` must do no other blocking
        I/O. An unreachable database, a connection lost or a statement timed out answers 503
        either way (here `DatabaseUnavailableError`, as psycopg2's OperationalError does).
        """
        engine = self._async_driver()
        if engine is None:

            def in_thread() -> T:
                with reading(self.sessions) as session:
                    return work(session)

            return await anyio.to_thread.run_sync(in_thread)

        def on_connection(connection: Connection) -> T:
            with read_only(self.sessions(bind=connection)) as session:
                return work(session)

        with _unavailable_as_503():
            async with engine.connect() as connection:
                return await connection.run_sync(on_connection)

    def _async_driver(self) -> AsyncEngine | None:
        """The async driver's engine, unless there is none or the sessions were rebound to a
        connection or engine of a caller's (whose transaction its pool could not see)."""
        if self.sessions.kw.get("bind") is not self.engine:
            return None
        return self.async_engine

    @property
    def reads_on_loop(self) -> bool:
        """Whether `read` runs on the event loop (the async driver): another read then costs a
        round trip but no thread-pool hop."""
        return self._async_driver() is not None

    @property
    def writes_alone(self) -> bool:
        """Whether `write_alone` can run a statement (PostgreSQL on the async driver)."""
        return self._async_driver() is not None

    async def write_alone(self, statement: Executable, values: dict[str, Any]) -> Row[Any] | None:
        """Run one statement that writes, atomic on its own, and answer its one row (None when
        it answered none): on the async driver, in autocommit (no BEGIN, no COMMIT), on the
        event loop. Only when `writes_alone`; a failing database answers 503 as in `read`."""
        engine = self._async_driver()
        if engine is None:
            raise RuntimeError("writes_alone is False: write in a session")
        with _unavailable_as_503():
            async with engine.connect() as connection:
                autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                return (await autocommit.execute(statement, values)).one_or_none()

    def close(self) -> None:
        """Release the connections (the pool, Redis clients) and forget the list totals."""
        self.cache.close()
        self.list_totals.close()
        self.events.close()
        self.engine.dispose()

    async def close_async(self) -> None:
        """Release what was opened on the running event loop (the async driver's pool, the
        async Redis client): the app's lifespan calls it before its loop ends."""
        await self.cache.close_async()
        if self.async_engine is not None:
            await self.async_engine.dispose()


def of_session(session: Session) -> Resources | None:
    """The resources the session was made by (None for a session made elsewhere)."""
    found = session.info.get(SESSION_INFO_KEY)
    return found if isinstance(found, Resources) else None
