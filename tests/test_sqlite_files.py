"""The embedded default's database file, WAL and shared memory are readable by their owner only."""

import os
import stat
from pathlib import Path

from sqlalchemy import text

import db_config
from config import Settings
from tests.served_app import app_environment, migrate


def _modes(database: Path) -> dict[str, str]:
    files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    return {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in files}


def _write_through_the_app_engine(database: Path) -> None:
    engine = db_config.build_engine(Settings(database_url=f"sqlite:///{database}"))
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE IF NOT EXISTS probe (x INTEGER)"))
            connection.execute(text("INSERT INTO probe VALUES (1)"))
        # Checked while a connection is open: SQLite removes the WAL when the last one closes.
        with engine.connect() as connection:
            connection.execute(text("SELECT count(*) FROM probe"))
            assert _modes(database) == dict.fromkeys(
                [database.name, f"{database.name}-wal", f"{database.name}-shm"], "0o600"
            )
    finally:
        engine.dispose()


def test_a_new_database_is_created_private(tmp_path: Path) -> None:
    _write_through_the_app_engine(tmp_path / "new.db")


def test_a_database_made_by_the_migrations_is_made_private(tmp_path: Path) -> None:
    # `make run` migrates first: alembic creates the file with the default permissions.
    database = tmp_path / "migrated.db"
    previous = os.umask(0o022)
    try:
        migrate(app_environment(f"sqlite:///{database}", tmp_path))
    finally:
        os.umask(previous)
    _write_through_the_app_engine(database)


def test_world_readable_files_of_an_older_version_are_made_private(tmp_path: Path) -> None:
    database = tmp_path / "old.db"
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        path.touch()
        path.chmod(0o644)
    _write_through_the_app_engine(database)
