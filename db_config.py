"""Building the engine, the per-request session dependency and after-commit callbacks.

The engine and its session factory belong to the app (`resources.Resources`), built from the
app's settings in its lifespan: nothing here connects or reads settings at import.
"""

import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import anyio
from fastapi import Request
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker
from sqlalchemy.pool import Pool
from starlette.concurrency import run_in_threadpool

from config import Settings

logger = logging.getLogger(__name__)

# An execution option: transactions on connections that carry it begin with the write lock.
_BEGIN_IMMEDIATE = "sqlite_begin_immediate"
_HOLDS_WRITER_LOCK = "holds_writer_lock"
# How long a write request may wait for the SQLite writers before it answers 503.
_WRITER_WAIT_SECONDS = 30
# Requests with these methods change data; the others only read.
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _database_files(database: str | None) -> list[Path]:
    """The database file and the WAL and shared-memory files SQLite keeps beside it."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return []
    return [Path(database + suffix) for suffix in ("", "-wal", "-shm")]


def _make_private(database: str | None) -> None:
    # SQLite creates the WAL and shared memory with the database file's permissions, so the
    # file is created 0600 before SQLite opens it; files an older version left 0644 are fixed.
    for path in _database_files(database):
        try:
            if path.name.endswith(("-wal", "-shm")):
                path.chmod(0o600)
            else:
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
                path.chmod(0o600)
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning("Could not make %s readable by its owner only: %s", path, exc)


_PENDING_CALLBACKS = "after_commit_pending"
_COMMITTED_CALLBACKS = "after_commit_committed"


def _install_sqlite_hooks(engine: Engine) -> None:
    made_private = False

    @event.listens_for(engine, "do_connect")
    def _before_connect(*_args: Any) -> None:
        nonlocal made_private
        if not made_private:
            made_private = True
            _make_private(engine.url.database)

    # pysqlite's own transaction handling breaks SAVEPOINT (and so per-test isolation):
    # hand transaction control to SQLAlchemy, as the SQLAlchemy docs recommend.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()

    # A deferred BEGIN that reads and then writes fails at once (SQLITE_BUSY_SNAPSHOT, where
    # busy_timeout does not apply) when another connection committed in between. Writers
    # therefore take the write lock at BEGIN and wait their turn; readers never wait.
    # Their turn comes from a lock in this process rather than SQLite's busy handler alone:
    # that one polls with sleeps of up to 100 ms, so under steady writes a waiting writer can
    # lose every race until busy_timeout (a 503). The lock hands over at once on release.
    writers = threading.Lock()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if not connection.get_execution_options().get(_BEGIN_IMMEDIATE, False):
            connection.exec_driver_sql("BEGIN")
            return
        if not writers.acquire(timeout=_WRITER_WAIT_SECONDS):
            raise OperationalError(
                "BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked")
            )
        connection.info[_HOLDS_WRITER_LOCK] = True
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            connection.info.pop(_HOLDS_WRITER_LOCK, None)
            writers.release()
            raise

    # A session gives its connection back when its transaction ends (commit or rollback,
    # however it ended), so the turn passes on there.
    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        if record.info.pop(_HOLDS_WRITER_LOCK, False):
            writers.release()


def _keep_row_values_out_of_errors(engine: Engine) -> None:
    # hide_parameters keeps bound values out of error messages, but PostgreSQL's DETAIL
    # ("Key (tag)=(...) already exists", "Failing row contains (...)") repeats them: keep only
    # the primary message, so neither a log line nor a traceback carries user data.
    @event.listens_for(engine, "handle_error")
    def _redact(context: ExceptionContext) -> None:
        original = context.original_exception
        primary = getattr(getattr(original, "diag", None), "message_primary", None)
        if not isinstance(primary, str) or str(original).strip() == primary:
            return
        original.args = (primary,)
        wrapped = context.sqlalchemy_exception
        if wrapped is not None:
            kind = type(original)
            wrapped.args = (f"({kind.__module__}.{kind.__name__}) {primary}",)


def build_engine(settings: Settings) -> Engine:
    """Create the engine for the configured database, with pool and timeouts set."""
    if settings.is_sqlite:
        engine = create_engine(
            settings.database_url,
            connect_args={"check_same_thread": False, "timeout": 5},
            hide_parameters=True,
        )
        _install_sqlite_hooks(engine)
        _keep_row_values_out_of_errors(engine)
        return engine
    sync_pool, _ = pool_sizes(settings)
    engine = create_engine(
        settings.database_url,
        **_pool_options(settings, pool_size=sync_pool, max_overflow=settings.db_max_overflow),
        connect_args={
            "connect_timeout": settings.db_connect_timeout_seconds,
            "options": f"-c statement_timeout={settings.db_statement_timeout_ms}",
            "application_name": _APPLICATION_NAME,
        },
    )
    _keep_row_values_out_of_errors(engine)
    return engine


_APPLICATION_NAME = "task-manager-api"


def pool_sizes(settings: Settings) -> tuple[int, int]:
    """How the worker's `DB_POOL_SIZE` connections are shared: (psycopg2's pool, the async
    driver's). With `DB_ASYNC_READS` the async driver's pool takes half (at least one each):
    its reads hold a connection only while PostgreSQL works, not while a thread waits its turn,
    and the database still sees `DB_POOL_SIZE` connections per worker."""
    if settings.is_sqlite or not settings.db_async_reads:
        return settings.db_pool_size, 0
    reads = max(1, settings.db_pool_size // 2)
    return max(1, settings.db_pool_size - reads), reads


def _pool_options(settings: Settings, *, pool_size: int, max_overflow: int) -> dict[str, Any]:
    return {
        # Sized to the request concurrency: an overflow connection per request costs a connect.
        "pool_size": pool_size,
        "max_overflow": max_overflow,
        # No ping per checkout by default: a dead connection fails its request (503), and that
        # error makes the pool replace every connection as old as it (detection on error).
        "pool_pre_ping": settings.db_pool_pre_ping,
        "pool_recycle": settings.db_pool_recycle_seconds or -1,
        "pool_timeout": settings.db_connect_timeout_seconds,
        # Error messages (and so logs) must never carry bound values: password hashes, user text.
        "hide_parameters": True,
    }


# libpq's client-side connection parameters that asyncpg does not take: it would send them to
# the server as settings, which PostgreSQL refuses. The connect timeout comes from
# DB_CONNECT_TIMEOUT_SECONDS on both drivers.
_LIBPQ_CLIENT_ONLY = frozenset(
    {
        "connect_timeout",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "fallback_application_name",
        "hostaddr",
        "gssencmode",
        "channel_binding",
        "requiressl",
        "sslcompression",
        "requirepeer",
        "load_balance_hosts",
    }
)


def _asyncpg_dsn(database_url: str) -> str:
    """`DATABASE_URL` as a DSN for asyncpg. Passed as SQLAlchemy's URL, its query parameters
    would become keyword arguments asyncpg refuses (`sslmode=require`: a TypeError on every
    connect); as a DSN, asyncpg reads the libpq ones (sslmode, sslrootcert, ...) itself."""
    url = make_url(database_url)
    query = {key: value for key, value in url.query.items() if key not in _LIBPQ_CLIENT_ONLY}
    return url.set(drivername="postgresql", query=query).render_as_string(hide_password=False)


def build_async_engine(settings: Settings) -> AsyncEngine | None:
    """The async driver's engine for the same PostgreSQL database (`DB_ASYNC_READS`), with
    its share of the pool (`pool_sizes`) and the same timeouts; None on SQLite or when off.

    Its connections belong to the event loop that opened them: `dispose` it on that loop
    before the loop ends (the app's lifespan does).
    """
    if settings.is_sqlite or not settings.db_async_reads:
        return None
    _, read_pool = pool_sizes(settings)
    engine = create_async_engine(
        # Where to connect comes from the DSN below, which asyncpg parses as libpq would.
        "postgresql+asyncpg://",
        # No overflow: a read waits for a pooled connection on the event loop, not a thread.
        **_pool_options(settings, pool_size=read_pool, max_overflow=0),
        connect_args={
            "dsn": _asyncpg_dsn(settings.database_url),
            "timeout": settings.db_connect_timeout_seconds,
            "server_settings": {
                "statement_timeout": str(settings.db_statement_timeout_ms),
                "application_name": _APPLICATION_NAME,
                # asyncpg prepares every statement, and PostgreSQL may then switch to one
                # generic plan for any parameters, blind to what a search pattern or a filter
                # value allows. Planned for each execution's values, as psycopg2's statements.
                "plan_cache_mode": "force_custom_plan",
            },
        },
    )
    _keep_row_values_out_of_errors(engine.sync_engine)
    return engine


@lru_cache(maxsize=8)
def _writer(bind: Engine) -> Engine:
    # The same engine and pool; only how its connections begin differs.
    return bind.execution_options(**{_BEGIN_IMMEDIATE: True})


def for_writing(session: Session) -> Session:
    """Make the session's transactions writers: on SQLite they begin with the write lock.

    A session bound to a connection (a test's outer transaction) is left as it is.
    """
    bind = session.bind
    if isinstance(bind, Engine) and bind.dialect.name == "sqlite":
        session.bind = _writer(bind)
    return session


_READ_ONLY = "read_only"
# Set on a connection's record while a read runs on it in autocommit; undone at check-in.
_AUTOCOMMIT = "autocommit_read"


@event.listens_for(Session, "before_flush")
def _refuse_writes(session: Session, *_args: Any) -> None:
    if session.info.get(_READ_ONLY):
        raise RuntimeError("a read-only request tried to write through its session")


@event.listens_for(Session, "after_begin")
def _read_in_autocommit(session: Session, _transaction: Any, connection: Connection) -> None:
    # Before the first statement: psycopg2 then sends no BEGIN, and the end of the session's
    # "transaction" (a DBAPI rollback) sends nothing either.
    if session.info.get(_READ_ONLY):
        connection.connection.dbapi_connection.autocommit = True  # type: ignore[union-attr]
        connection.info[_AUTOCOMMIT] = True


@event.listens_for(Pool, "checkin")
def _end_autocommit(dbapi_connection: Any, record: Any) -> None:
    # A flag, not SQLAlchemy's AUTOCOMMIT isolation level: resetting that level at check-in
    # costs psycopg2 a round trip (SET) on every read; clearing the flag costs none.
    if record.info.pop(_AUTOCOMMIT, False) and dbapi_connection is not None:
        dbapi_connection.autocommit = False


def read_only(session: Session) -> Session:
    """Mark a session as one that only reads, whatever it is bound to: on PostgreSQL its
    statements then run without a transaction (no BEGIN, no COMMIT) and an ORM write through
    it is refused. `for_reading` decides when a session from the pool may be marked."""
    session.info[_READ_ONLY] = True
    return session


def for_reading(session: Session) -> bool:
    """Make the session's statements run without a transaction, on PostgreSQL: no BEGIN and
    no COMMIT round trips, and no thread-pool hop to end it. True when it did.

    Under READ COMMITTED every statement sees its own snapshot anyway, so a request that only
    reads loses nothing. SQLite keeps its deferred transaction (one snapshot per request, no
    round trips to save); a session bound to a connection (a test's outer transaction) is left
    as it is. An ORM write through such a session is refused.
    """
    bind = session.bind
    if not isinstance(bind, Engine) or bind.dialect.name != "postgresql":
        return False
    read_only(session)
    return True


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error, for sync code."""
    with sessions() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def reading(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session for sync code that only reads (`for_reading`), closed at the end."""
    with sessions() as session:
        for_reading(session)
        yield session


async def get_db(request: Request) -> AsyncIterator[Session]:
    """One session and one transaction per request, committed before the response is sent.

    Async on purpose: opening a session does no I/O, so only a request that wrote pays a
    thread-pool hop, once, for its COMMIT (or ROLLBACK) at the end; a sync route that commits
    as its last step, in its own hop, leaves nothing to commit here and saves that one too. A
    request whose method writes gets a writer session. Reads on PostgreSQL run without a transaction and end with
    no I/O at all (closing gives the connection back; nothing to commit or roll back); on
    SQLite they stay deferred, so they never queue for the write lock.
    """
    session = request.app.state.resources.sessions()
    reading = False
    if request.method in _WRITE_METHODS:
        for_writing(session)
    else:
        reading = for_reading(session)
    try:
        yield session
        if session.in_transaction() and not reading:
            await run_in_threadpool(session.commit)
    except BaseException as error:
        # Some refusals must keep what the request did (a revoked session, see AppError).
        end = session.commit if getattr(error, "commit_changes", False) else session.rollback
        # Shielded: a cancelled request must still give its connection back cleanly.
        with anyio.CancelScope(shield=True):
            if session.in_transaction() and not reading:
                await run_in_threadpool(end)
        raise
    finally:
        session.close()


# --- after-commit and after-rollback callbacks -----------------------------------------


@dataclass(frozen=True)
class _Callback:
    fn: Callable[[], object]
    # True: runs once the work is committed; False: runs once it is certain it never will be.
    on_commit: bool


def after_commit(session: Session, fn: Callable[[], object]) -> None:
    """Run `fn` once the session's outermost transaction has committed, else never.

    Registered inside a SAVEPOINT, `fn` follows it: dropped if the savepoint rolls back, and
    still dropped if the savepoint is released but an enclosing transaction then rolls back.
    `fn` runs after the connection has been handed back; it must not raise (a failure is
    logged: the commit it follows has happened and cannot be undone).
    """
    _register(session, _Callback(fn, on_commit=True))


def after_rollback(session: Session, fn: Callable[[], object]) -> None:
    """Run `fn` once the work done so far can no longer commit, else never: `after_commit`'s mirror.

    Registered inside a SAVEPOINT, `fn` runs when that savepoint rolls back, or when it was
    released and an enclosing transaction then rolls back (or fails to commit, or the session
    closes without committing). Dropped once the outermost transaction commits. Like
    `after_commit`, `fn` must not raise (a failure is logged).
    """
    _register(session, _Callback(fn, on_commit=False))


def _register(session: Session, callback: _Callback) -> None:
    transaction = session.get_nested_transaction() or session.get_transaction() or session.begin()
    pending: dict[SessionTransaction, list[_Callback]]
    pending = session.info.setdefault(_PENDING_CALLBACKS, {})
    pending.setdefault(transaction, []).append(callback)


def _enclosing(transaction: SessionTransaction) -> SessionTransaction | None:
    # The nearest enclosing transaction that commits or rolls back on its own (a SAVEPOINT or
    # the root): inner "subtransactions" never fire after_commit.
    parent = transaction.parent
    while parent is not None and not parent.nested and parent.parent is not None:
        parent = parent.parent
    return parent


def _run_all(callbacks: Iterable[_Callback]) -> None:
    for callback in callbacks:
        try:
            callback.fn()
        except Exception:
            kind = "after-commit" if callback.on_commit else "after-rollback"
            logger.exception("An %s callback failed", kind)


@event.listens_for(Session, "after_commit")
def _promote_callbacks(session: Session) -> None:
    pending: dict[SessionTransaction, list[_Callback]] | None
    pending = session.info.get(_PENDING_CALLBACKS)
    if not pending:
        return
    # Fired for a released SAVEPOINT too: while it fires, the committing transaction is
    # still the innermost one.
    committing = session.get_nested_transaction() or session.get_transaction()
    callbacks = pending.pop(committing, None) if committing is not None else None
    if not callbacks or committing is None:
        return
    enclosing = _enclosing(committing)
    if enclosing is None:
        # Committed for good: the commit callbacks run once the transaction has ended, the
        # rollback ones never.
        committed = [callback for callback in callbacks if callback.on_commit]
        session.info.setdefault(_COMMITTED_CALLBACKS, []).extend(committed)
    else:
        pending.setdefault(enclosing, []).extend(callbacks)


@event.listens_for(Session, "after_transaction_end")
def _run_or_drop_callbacks(session: Session, transaction: SessionTransaction) -> None:
    if _PENDING_CALLBACKS not in session.info and _COMMITTED_CALLBACKS not in session.info:
        return
    pending: dict[SessionTransaction, list[_Callback]] | None
    pending = session.info.get(_PENDING_CALLBACKS)
    # Still pending when its transaction ends: it was not committed (rolled back, a failed
    # commit, a close): the commit callbacks never run, the rollback ones run now.
    uncommitted = pending.pop(transaction, []) if pending else []
    _run_all(callback for callback in uncommitted if not callback.on_commit)
    if transaction.parent is not None:
        return
    session.info.pop(_PENDING_CALLBACKS, None)
    _run_all(session.info.pop(_COMMITTED_CALLBACKS, ()))
