"""Ids are never given twice, and a token authenticates only the account it was issued for."""

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from jose import jwt
from sqlalchemy import Connection, delete, insert

import auth
from config import get_settings
from db_models import User, utcnow
from tests.conftest import PASSWORD, RESOURCES, AuthUser, register_and_login
from tests.process_helpers import alembic

PDF = b"%PDF-1.4\n% test\n"


def test_the_id_of_a_deleted_user_is_never_given_again(
    client: TestClient, db_connection: Connection
) -> None:
    register_and_login(client, "first")
    second = register_and_login(client, "second")
    # No route deletes accounts yet: the row goes, as an account deletion would remove it.
    db_connection.execute(delete(User).where(User.id == second.id))
    third = register_and_login(client, "third")
    assert third.id > second.id


def test_the_id_of_a_deleted_task_is_never_given_again(client: TestClient, alice: AuthUser) -> None:
    ids = [
        client.post("/tasks", json={"title": title}, headers=alice.headers).json()["id"]
        for title in ("one", "two")
    ]
    assert client.delete(f"/tasks/{ids[1]}", headers=alice.headers).status_code == 204
    response = client.post("/tasks", json={"title": "three"}, headers=alice.headers)
    assert response.status_code == 201
    assert response.json()["id"] > ids[1]


def test_the_id_of_a_deleted_file_is_never_given_again(client: TestClient, alice: AuthUser) -> None:
    task_id = client.post("/tasks", json={"title": "files"}, headers=alice.headers).json()["id"]

    def upload(name: str) -> int:
        response = client.post(
            f"/tasks/{task_id}/files", files={"file": (name, PDF)}, headers=alice.headers
        )
        assert response.status_code == 201, response.text
        file_id: int = response.json()["id"]
        return file_id

    upload("one.pdf")
    second = upload("two.pdf")
    assert client.delete(f"/files/{second}", headers=alice.headers).status_code == 204
    assert upload("three.pdf") > second


# --- tokens name one account ---------------------------------------------------------------


def _me(client: TestClient, token: str) -> tuple[int, dict[str, object]]:
    response = client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    body: dict[str, object] = response.json()
    return response.status_code, body


def test_a_token_never_authenticates_another_account_with_the_same_id(
    client: TestClient, db_connection: Connection
) -> None:
    old = register_and_login(client, "leaving")
    db_connection.execute(delete(User).where(User.id == old.id))
    # The id given to a new account, as SQLite did before ids were made never-reused.
    db_connection.execute(
        insert(User).values(
            id=old.id,
            username="arriving",
            email="arriving@example.com",
            hashed_password=auth.hash_password(PASSWORD, get_settings()),
            created_at=utcnow(),
        )
    )
    # Another worker, or this one once USER_CACHE_SECONDS have passed, remembers nothing.
    RESOURCES.recent_users.clear()

    status, body = _me(client, old.token)
    assert status == 401
    assert body["code"] == "invalid_token"

    response = client.post("/auth/login", json={"username": "arriving", "password": PASSWORD})
    assert response.status_code == 200
    status, body = _me(client, response.json()["access_token"])
    assert status == 200
    assert body["id"] == old.id
    assert body["username"] == "arriving"
    # ... and the leaver's token stays refused once the arriving account is remembered.
    assert _me(client, old.token)[0] == 401


def _signed(claims: dict[str, object]) -> str:
    return jwt.encode(claims, get_settings().secret_key.get_secret_value(), algorithm="HS256")


def test_a_token_without_a_live_session_of_its_account_is_refused(
    client: TestClient, alice: AuthUser, bob: AuthUser
) -> None:
    now = datetime.now(UTC)
    claims: dict[str, object] = {
        "sub": str(alice.id),
        "iat": now,
        "exp": now + timedelta(minutes=5),
    }
    for token in (
        _signed(claims),  # as issued before tokens named their session
        _signed({**claims, "sid": "999999"}),  # no such session
        _signed({**claims, "sid": "x"}),
        _signed({**claims, "sid": jwt.get_unverified_claims(bob.token)["sid"]}),  # bob's
    ):
        status, body = _me(client, token)
        assert status == 401
        assert body["code"] == "invalid_token"
    assert _me(client, alice.token)[0] == 200


# --- the migration that made ids never-reused on SQLite ------------------------------------


def _table_sql(db: sqlite3.Connection, table: str) -> str:
    row = db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    sql: str = row[0]
    return sql


_SEED = """
INSERT INTO users (id, username, email, hashed_password, created_at) VALUES
    (1, 'Ann', 'ann@example.com', 'h', '2026-01-01 00:00:00.000000'),
    (2, 'bo', 'bo@example.com', 'h', '2026-01-02 00:00:00.000000'),
    (3, 'cy', 'cy@example.com', 'h', '2026-01-03 00:00:00.000000');
INSERT INTO tasks (id, user_id, title, description, completed, priority, due_date,
                   created_at, updated_at) VALUES
    (1, 1, 'a', NULL, 0, 2, NULL, '2026-01-01 00:00:00', '2026-01-01 00:00:00'),
    (2, 2, 'b', 'd', 1, 3, '2026-02-01', '2026-01-01 00:00:00', '2026-01-01 00:00:00'),
    (3, 2, 'c', NULL, 0, 1, NULL, '2026-01-01 00:00:00', '2026-01-01 00:00:00');
INSERT INTO task_tags (task_id, tag, user_id) VALUES (1, 'x', 1), (2, 'y', 2), (2, 'z', 2);
INSERT INTO task_files (id, task_id, user_id, original_filename, stored_filename,
                        content_type, file_size, sha256, uploaded_at) VALUES
    (1, 2, 2, 'a.pdf', 'f1.pdf', 'application/pdf', 3, 'aa', '2026-01-01 00:00:00'),
    (2, 3, 2, 'b.pdf', 'f2.pdf', 'application/pdf', 3, 'bb', '2026-01-01 00:00:00');
"""


_SEEDED_TABLES = ("users", "tasks", "task_tags", "task_files")


def _columns(db: sqlite3.Connection) -> dict[str, list[str]]:
    return {
        table: [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
        for table in _SEEDED_TABLES
    }


def _contents(
    db: sqlite3.Connection, columns: dict[str, list[str]]
) -> dict[str, list[tuple[object, ...]]]:
    # The given columns only: later migrations add columns (a task's version) of their own.
    return {
        table: db.execute(
            f"SELECT {', '.join(columns[table])} FROM {table} ORDER BY 1, 2"  # noqa: S608
        ).fetchall()
        for table in _SEEDED_TABLES
    }


def test_the_sqlite_migration_keeps_every_row_and_stops_reusing_ids(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    alembic(url, "upgrade", "0002_task_search")
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.executescript(_SEED)
        seeded_columns = _columns(db)
        before = _contents(db, seeded_columns)
        assert "AUTOINCREMENT" not in _table_sql(db, "users")
    db.close()

    # This migration's own effect; later ones add columns the comparison would not expect.
    alembic(url, "upgrade", "0003_ids")
    db = sqlite3.connect(tmp_path / "old.db")
    try:
        assert _contents(db, seeded_columns) == before
        for table in ("users", "tasks", "task_files"):
            assert "AUTOINCREMENT" in _table_sql(db, table)
        db.execute("PRAGMA foreign_keys=ON")
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        # The case-insensitive username index survived the rebuild.
        with pytest.raises(sqlite3.IntegrityError):
            db.execute(
                "INSERT INTO users (username, email, hashed_password, created_at) "
                "VALUES ('ANN', 'other@example.com', 'h', '2026-01-04 00:00:00')"
            )
        # The highest id, once deleted, is not given again; the cascade still reaches the rows.
        db.execute("DELETE FROM users WHERE id = 3")
        new_id = db.execute(
            "INSERT INTO users (username, email, hashed_password, created_at) "
            "VALUES ('dee', 'dee@example.com', 'h', '2026-01-04 00:00:00') RETURNING id"
        ).fetchone()[0]
        assert new_id == 4
        db.execute("DELETE FROM users WHERE id = 2")
        assert db.execute("SELECT count(*) FROM tasks WHERE user_id = 2").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM task_files").fetchone() == (0,)
        db.rollback()
    finally:
        db.close()

    alembic(url, "downgrade", "0002_task_search")
    db = sqlite3.connect(tmp_path / "old.db")
    try:
        assert _contents(db, seeded_columns) == before
        assert "AUTOINCREMENT" not in _table_sql(db, "users")
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        db.close()
