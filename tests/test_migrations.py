"""Alembic is the only schema source: it builds an empty database and matches the models."""

import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, create_engine, inspect, make_url, text

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
