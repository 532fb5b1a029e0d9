"""Engine, session factory, the per-request session dependency and after-commit callbacks."""

import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker
from starlette.concurrency import run_in_threadpool

from config import Settings, get_settings

logger = logging.getLogger(__name__)

_PENDING_CALLBACKS = "after_commit_pending"
_COMMITTED_CALLBACKS = "after_commit_committed"


def _install_sqlite_hooks(engine: Engine) -> None:
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

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")


def build_engine(settings: Settings) -> Engine:
    """Create the engine for the configured database, with pool and timeouts set."""
    if settings.is_sqlite:
        engine = create_engine(
            settings.database_url,
            connect_args={"check_same_thread": False, "timeout": 5},
            hide_parameters=True,
        )
        _install_sqlite_hooks(engine)
        return engine
    return create_engine(
        settings.database_url,
        # Sized to the request concurrency: an overflow connection per request costs a connect.
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        # A connection that died while pooled (a database restart) is replaced, not served.
        pool_pre_ping=True,
        pool_timeout=settings.db_connect_timeout_seconds,
        # Error messages (and so logs) must never carry bound values: password hashes, user text.
        hide_parameters=True,
        connect_args={
            "connect_timeout": settings.db_connect_timeout_seconds,
            "options": f"-c statement_timeout={settings.db_statement_timeout_ms}",
            "application_name": "task-manager-api",
        },
    )


engine = build_engine(get_settings())
SessionLocal = sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


@contextmanager
def transaction() -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error, for sync code."""
    with SessionLocal() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


async def get_db() -> AsyncIterator[Session]:
    """One session and one transaction per request, committed before the response is sent.

    Async on purpose: opening a session does no I/O, so only a request that used the database
    pays a thread-pool hop, once, for its COMMIT (or ROLLBACK) at the end.
    """
    session = SessionLocal()
    try:
        yield session
        if session.in_transaction():
            await run_in_threadpool(session.commit)
    except BaseException:
        # Shielded: a cancelled request must still give its connection back cleanly.
        with anyio.CancelScope(shield=True):
            if session.in_transaction():
                await run_in_threadpool(session.rollback)
        raise
    finally:
        session.close()


# --- after-commit callbacks ---------------------------------------------------------------


def after_commit(session: Session, fn: Callable[[], None]) -> None:
    """Run `fn` once the session's outermost transaction has committed, else never.

    Registered inside a SAVEPOINT, `fn` follows it: dropped if the savepoint rolls back, and
    still dropped if the savepoint is released but an enclosing transaction then rolls back.
    `fn` runs after the connection has been handed back; it must not raise (a failure is
    logged: the commit it follows has happened and cannot be undone).
    """
    transaction = session.get_nested_transaction() or session.get_transaction() or session.begin()
    pending: dict[SessionTransaction, list[Callable[[], None]]]
    pending = session.info.setdefault(_PENDING_CALLBACKS, {})
    pending.setdefault(transaction, []).append(fn)


def _enclosing(transaction: SessionTransaction) -> SessionTransaction | None:
    # The nearest enclosing transaction that commits or rolls back on its own (a SAVEPOINT or
    # the root): inner "subtransactions" never fire after_commit.
    parent = transaction.parent
    while parent is not None and not parent.nested and parent.parent is not None:
        parent = parent.parent
    return parent


@event.listens_for(Session, "after_commit")
def _promote_callbacks(session: Session) -> None:
    pending: dict[SessionTransaction, list[Callable[[], None]]] | None
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
        session.info.setdefault(_COMMITTED_CALLBACKS, []).extend(callbacks)
    else:
        pending.setdefault(enclosing, []).extend(callbacks)


@event.listens_for(Session, "after_transaction_end")
def _run_or_drop_callbacks(session: Session, transaction: SessionTransaction) -> None:
    if _PENDING_CALLBACKS not in session.info and _COMMITTED_CALLBACKS not in session.info:
        return
    pending: dict[SessionTransaction, list[Callable[[], None]]] | None
    pending = session.info.get(_PENDING_CALLBACKS)
    if pending:
        # Still pending when its transaction ends: it was not committed, so it never runs.
        pending.pop(transaction, None)
    if transaction.parent is not None:
        return
    session.info.pop(_PENDING_CALLBACKS, None)
    for fn in session.info.pop(_COMMITTED_CALLBACKS, ()):
        try:
            fn()
        except Exception:
            logger.exception("An after-commit callback failed")
