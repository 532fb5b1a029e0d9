"""Requests that only read run on PostgreSQL without a transaction; writes keep theirs.

A read pays no BEGIN and no COMMIT round trip and no thread-pool hop to end a transaction
(docs/PERFORMANCE.md); under READ COMMITTED each statement sees its own snapshot anyway. These
tests bind the app's sessions to a real engine, as production does (the other tests share one
outer transaction per test), so what they create is committed for real and removed afterwards.
"""

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio.to_thread
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

import db_config
from config import Settings
from db_models import Task
from services import tasks as task_service
from tests.conftest import BACKEND, PASSWORD, RESOURCES, TEST_DATABASE_URL

# psycopg2's connection.get_transaction_status() values (psycopg2.extensions).
IDLE, IN_TRANSACTION = 0, 2

pytestmark = [
    pytest.mark.postgres_redis,
    pytest.mark.skipif(BACKEND == "embedded", reason="reads keep their transaction on SQLite"),
]


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = db_config.build_engine(Settings(database_url=TEST_DATABASE_URL))
    # The per-test fixture binds the sessions back to the test's connection afterwards.
    RESOURCES.sessions.configure(bind=engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def headers(client: TestClient, engine: Engine) -> Iterator[dict[str, str]]:
    username = f"reader-{uuid.uuid4().hex[:12]}"
    body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
    try:
        assert client.post("/auth/register", json=body).status_code == 201
        login = client.post("/auth/login", json={"username": username, "password": PASSWORD})
        yield {"Authorization": f"Bearer {login.json()['access_token']}"}
    finally:
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM users WHERE username = :u"), {"u": username})


def _spy_on(monkeypatch: pytest.MonkeyPatch, name: str) -> list[dict[str, Any]]:
    """Record, for each call of a task service function, how its session's connection runs."""
    seen: list[dict[str, Any]] = []
    original = getattr(task_service, name)

    def spy(session: Session, **kwargs: Any) -> Any:
        result = original(session, **kwargs)
        dbapi = session.connection().connection.dbapi_connection
        assert dbapi is not None
        seen.append({"autocommit": dbapi.autocommit, "status": dbapi.get_transaction_status()})
        return result

    monkeypatch.setattr(task_service, name, spy)
    return seen


def test_a_read_runs_without_a_transaction_and_a_write_within_one(
    client: TestClient, headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = _spy_on(monkeypatch, "read_page")
    created = _spy_on(monkeypatch, "create_task")
    assert (
        client.post("/tasks", json={"title": "t", "tags": ["a"]}, headers=headers).status_code
        == 201
    )
    response = client.get("/tasks", headers=headers)
    assert response.status_code == 200
    assert [task["tags"] for task in response.json()] == [["a"]]
    # The read's statements ran in autocommit: no transaction was open after them.
    assert listed == [{"autocommit": True, "status": IDLE}]
    # The write's ran inside its transaction, committed once the route returned.
    assert created == [{"autocommit": False, "status": IN_TRANSACTION}]


def test_a_connection_that_served_a_read_serves_a_write_in_a_transaction(
    client: TestClient, headers: dict[str, str], engine: Engine
) -> None:
    # One connection for both: the read's autocommit must not stick to it in the pool.
    RESOURCES.sessions.configure(
        bind=db_config.build_engine(Settings(database_url=TEST_DATABASE_URL, db_pool_size=1))
    )
    assert client.get("/tasks", headers=headers).status_code == 200
    task = client.post("/tasks", json={"title": "kept"}, headers=headers)
    assert task.status_code == 201
    assert client.get(f"/tasks/{task.json()['id']}", headers=headers).json()["title"] == "kept"


def test_an_orm_write_through_a_read_session_is_refused(engine: Engine) -> None:
    with Session(engine) as session:
        assert db_config.for_reading(session)
        session.add(Task(user_id=1, title="never written"))
        with pytest.raises(RuntimeError, match="read-only"):
            session.flush()


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every function the app runs in a thread-pool hop, in order."""
    seen: list[str] = []
    original = anyio.to_thread.run_sync

    async def counted(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        inner = getattr(func, "func", func)  # run_in_threadpool wraps in a partial
        seen.append(getattr(inner, "__name__", type(inner).__name__))
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    return seen


def test_each_busy_route_takes_one_thread_pool_hop_at_most(
    client: TestClient, headers: dict[str, str], hops: list[str]
) -> None:
    """A hop costs about as much CPU as a statement (docs/PERFORMANCE.md): a route that does
    I/O takes one, in which it also serializes its answer and commits; one that needs none
    (a remembered caller, cached statistics, a revalidated list whose change counter is
    cached) takes none."""

    def hops_of(method: str, path: str, status: int, **kwargs: Any) -> list[str]:
        hops.clear()
        response = client.request(
            method, path, headers={**headers, **kwargs.pop("extra", {})}, **kwargs
        )
        assert response.status_code == status, response.text
        return list(hops)

    assert client.get("/auth/me", headers=headers).status_code == 200  # the caller remembered
    assert hops_of("GET", "/auth/me", 200) == []
    created = client.post("/tasks", json={"title": "t", "tags": ["a"]}, headers=headers).json()
    path = f"/tasks/{created['id']}"
    assert len(hops_of("POST", "/tasks", 201, json={"title": "u", "tags": ["b"]})) == 1
    assert len(hops_of("PATCH", path, 200, json={"description": "d"})) == 1
    assert len(hops_of("GET", path, 200)) == 1
    assert len(hops_of("GET", "/tasks?limit=20", 200)) == 1
    etag = client.get("/tasks?limit=20", headers=headers).headers["ETag"]
    assert len(hops_of("GET", "/tasks?limit=20", 304, extra={"If-None-Match": etag})) == 1
    # The counter that revalidation read is cached: polling again needs no database.
    assert hops_of("GET", "/tasks?limit=20", 304, extra={"If-None-Match": etag}) == []
    assert len(hops_of("GET", "/tasks/stats", 200)) == 1  # computed
    assert hops_of("GET", "/tasks/stats", 200) == []  # from the cache
