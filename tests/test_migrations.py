"""Alembic is the only schema source: it builds an empty database and matches the models."""

import itertools
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, create_engine, event, inspect, make_url, text

from db_models import Base, exists_on
from tests.conftest import RESOURCES
from tests.process_helpers import alembic

EXPECTED_TABLES = {
    *("alembic_version", "users", "tasks", "task_tags", "task_files"),
    *("auth_sessions", "refresh_tokens", "personal_tokens", "account_tokens"),
    *("user_change_counters", "idempotency_keys", "outbox"),
}


def _drift(connection: Connection) -> list[object]:
    def include_object(obj: object, *_: object) -> bool:
        return exists_on(obj, connection.dialect.name)

    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_object": include_object}
    )
    with warnings.catch_warnings():
        # SQLite cannot reflect expression indexes; alembic says so and skips comparing them.
        warnings.filterwarnings("ignore", message=".*expression-based index")
        return list(compare_metadata(context, Base.metadata))


def test_models_match_the_migrated_schema(db_connection: Connection) -> None:
    assert _drift(db_connection) == []


def test_upgrade_head_builds_an_empty_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    alembic(url, "upgrade", "head")
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) == EXPECTED_TABLES
            assert _drift(connection) == []
    finally:
        engine.dispose()


@pytest.fixture
def empty_postgres_database() -> Iterator[str]:
    name = f"tm_migrate_{uuid.uuid4().hex[:12]}"
    admin = create_engine(RESOURCES.engine.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield (
            make_url(RESOURCES.engine.url).set(database=name).render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.postgres_redis
def test_upgrade_head_builds_an_empty_postgres_database(empty_postgres_database: str) -> None:
    alembic(empty_postgres_database, "upgrade", "head")
    engine = create_engine(empty_postgres_database)
    try:
        with engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) >= EXPECTED_TABLES
            assert _drift(connection) == []
        alembic(empty_postgres_database, "downgrade", "base")
        with engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) == {"alembic_version"}
    finally:
        engine.dispose()


def _existing_task_gets_version_1(database_url: str) -> None:
    alembic(database_url, "upgrade", "0002_task_search")
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO users (id, username, email, hashed_password, created_at) "
                    "VALUES (1, 'old', 'old@example.com', 'x', CURRENT_TIMESTAMP)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO tasks (id, user_id, title, completed, priority, created_at, "
                    "updated_at) VALUES (7, 1, 'From before', false, 2, CURRENT_TIMESTAMP, "
                    "CURRENT_TIMESTAMP)"
                )
            )
        alembic(database_url, "upgrade", "head")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version FROM tasks")).scalars().all() == [1]
    finally:
        engine.dispose()


def test_tasks_from_before_versions_start_at_1_on_sqlite(tmp_path: Path) -> None:
    _existing_task_gets_version_1(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.mark.postgres_redis
def test_tasks_from_before_versions_start_at_1_on_postgres(empty_postgres_database: str) -> None:
    _existing_task_gets_version_1(empty_postgres_database)


COUNTER_TRIGGERS = {
    f"tasks_{event}_raises_change_counter" for event in ("insert", "update", "delete")
}


def _task_triggers(connection: Connection) -> set[str]:
    if connection.dialect.name == "postgresql":
        query = (
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'tasks'::regclass AND NOT tgisinternal"
        )
    else:
        query = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'tasks'"
    return set(connection.execute(text(query)).scalars())


def _every_task_statement_raises_the_counter(database_url: str) -> None:
    """Whatever writes the tasks, the database raises their owner's change counter with it."""
    alembic(database_url, "upgrade", "head")
    engine = create_engine(database_url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA foreign_keys=ON"))
    seen: list[int | None] = []

    def write(statement: str) -> None:
        with engine.begin() as connection:
            connection.execute(text(statement))
            seen.append(
                connection.execute(
                    text("SELECT counter FROM user_change_counters WHERE user_id = 1")
                ).scalar()
            )

    try:
        with engine.connect() as connection:
            assert _task_triggers(connection) == COUNTER_TRIGGERS
        write(
            "INSERT INTO users (id, username, email, hashed_password, created_at) VALUES "
            "(1, 'ann', 'ann@example.com', 'x', CURRENT_TIMESTAMP), "
            "(2, 'bob', 'bob@example.com', 'x', CURRENT_TIMESTAMP)"
        )
        insert = (
            "INSERT INTO tasks (id, user_id, title, completed, priority, created_at, updated_at) "
            "VALUES "
        )
        row = "(%s, 1, 'a task', false, 2, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
        write(insert + row % 1)
        write(insert + ", ".join(row % task_id for task_id in (2, 3)))  # one statement, two rows
        write("UPDATE tasks SET title = 'changed' WHERE user_id = 1")
        write("DELETE FROM tasks WHERE id = 3")
        assert seen[0] is None  # users alone change no tasks
        assert all(
            before is not None and after is not None and after > before
            for before, after in itertools.pairwise(seen[1:])
        ), seen
        with engine.connect() as connection:
            others = "SELECT count(*) FROM user_change_counters WHERE user_id <> 1"
            assert connection.execute(text(others)).scalar_one() == 0
        # An account deleted with its tasks (by cascade) leaves no counter behind, and no error.
        write("DELETE FROM users WHERE id = 1")
        assert seen[-1] is None

        alembic(database_url, "downgrade", "0006_accounts")
        with engine.connect() as connection:
            assert _task_triggers(connection) == set()
        alembic(database_url, "upgrade", "head")
        with engine.connect() as connection:
            assert _task_triggers(connection) == COUNTER_TRIGGERS
    finally:
        engine.dispose()


def test_every_task_statement_raises_the_counter_on_sqlite(tmp_path: Path) -> None:
    _every_task_statement_raises_the_counter(f"sqlite:///{tmp_path / 'counters.db'}")


@pytest.mark.postgres_redis
def test_every_task_statement_raises_the_counter_on_postgres(empty_postgres_database: str) -> None:
    _every_task_statement_raises_the_counter(empty_postgres_database)
