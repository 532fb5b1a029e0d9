"""Engine, session factory and the per-request session dependency."""

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from config import Settings, get_settings


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
    except BaseException as error:
        # Some refusals must keep what the request did (a revoked session, see AppError).
        end = session.commit if getattr(error, "commit_changes", False) else session.rollback
        # Shielded: a cancelled request must still give its connection back cleanly.
        with anyio.CancelScope(shield=True):
            if session.in_transaction():
                await run_in_threadpool(end)
        raise
    finally:
        session.close()
