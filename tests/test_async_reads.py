"""The async driver (`DB_ASYNC_READS`, PostgreSQL): the reads of a task, a list and the
statistics, and a create and an update in one statement.

The other tests run every request inside one outer transaction on one psycopg2 connection,
which the async driver's pool cannot see, so `Resources.read` takes the thread-pool path there.
These tests serve an app with resources of its own, as production does: what they write is
committed for real and removed afterwards.
"""

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.orm import Session

from config import Settings
from db_models import OutboxJob
from main import create_app
from resources import Resources
from services import tasks as task_service
from tests.conftest import BACKEND, PASSWORD, RESOURCES, TEST_DATABASE_URL
from tests.job_helpers import HeldJobs
from tests.tcp_proxy import TcpProxy

pytestmark = [
    pytest.mark.postgres_redis,
    pytest.mark.skipif(BACKEND == "embedded", reason="the async driver is PostgreSQL's"),
]


class Served:
    """An app on resources of its own, its users, and the statements each engine ran."""

    def __init__(self, settings: Settings) -> None:
        self.resources = Resources(settings)
        # Jobs the writes commit are only collected (their rows are removed with the users).
        self.resources.runner = HeldJobs()
        assert self.resources.async_engine is not None
        self.statements: dict[str, list[str]] = {"sync": [], "async": []}
        self._listen(self.resources.engine, "sync")
        self._listen(self.resources.async_engine.sync_engine, "async")
        self.usernames: list[str] = []
        with RESOURCES.engine.connect() as connection:
            self._outbox_before = connection.scalar(
                select(func.coalesce(func.max(OutboxJob.id), 0))
            )

    def _listen(self, engine: Engine, name: str) -> None:
        @event.listens_for(engine, "before_cursor_execute")
        def _record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            self.statements[name].append(statement)

    def user(self, client: TestClient) -> dict[str, str]:
        username = f"async-{uuid.uuid4().hex[:12]}"
        self.usernames.append(username)
        body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
        assert client.post("/auth/register", json=body).status_code == 201
        login = client.post("/auth/login", json={"username": username, "password": PASSWORD})
        return {"Authorization": f"Bearer {login.json()['access_token']}"}

    def forget_statements(self) -> None:
        for seen in self.statements.values():
            seen.clear()

    def remove(self) -> None:
        # Through the test suite's own engine: these resources may point at a cut proxy.
        with RESOURCES.engine.begin() as connection:
            connection.execute(
                text("DELETE FROM users WHERE username = ANY(:names)"), {"names": self.usernames}
            )
            connection.execute(
                text("DELETE FROM outbox WHERE id > :before"), {"before": self._outbox_before}
            )
        self.resources.close()


@pytest.fixture
def served() -> Iterator[tuple[TestClient, Served]]:
    served = Served(RESOURCES.settings.model_copy(update={"db_pool_size": 4}))
    try:
        with TestClient(create_app(resources=served.resources)) as client:
            yield client, served
    finally:
        served.remove()


def _problem(response: Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code
    assert "Traceback" not in response.text


def test_a_task_is_read_on_the_async_driver_exactly_as_written(
    served: tuple[TestClient, Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, app = served
    in_transaction: list[bool] = []
    read_owned_task = task_service.read_owned_task

    def spy(session: Session, **kwargs: Any) -> Any:
        task = read_owned_task(session, **kwargs)
        asyncpg_connection = session.connection().connection.driver_connection
        assert asyncpg_connection is not None
        in_transaction.append(asyncpg_connection.is_in_transaction())
        return task

    monkeypatch.setattr(task_service, "read_owned_task", spy)
    headers = app.user(client)
    body = {
        "title": "Quarterly report",
        "description": "Numbers, then prose",
        "priority": "high",
        "due_date": "2031-05-17",
        "tags": ["work", "q2"],
    }
    created = client.post("/tasks", json=body, headers=headers)
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    app.forget_statements()

    read = client.get(f"/tasks/{task_id}", headers=headers)

    assert read.status_code == 200, read.text
    assert read.json() == created.json()
    assert read.headers["ETag"] == created.headers["ETag"]
    # One statement through asyncpg, outside any transaction; psycopg2 sent nothing.
    assert app.statements["sync"] == []
    assert len(app.statements["async"]) == 1
    assert in_transaction == [False]

    unchanged = client.get(
        f"/tasks/{task_id}", headers={**headers, "If-None-Match": read.headers["ETag"]}
    )
    assert unchanged.status_code == 304
    assert unchanged.headers["ETag"] == read.headers["ETag"]


def test_a_create_is_one_statement_on_the_async_driver(served: tuple[TestClient, Served]) -> None:
    client, app = served
    headers = app.user(client)
    before = client.get("/tasks/stats", headers=headers)
    assert before.headers["X-Cache"] == "MISS"
    app.forget_statements()
    body = {
        "title": "Quarterly report",
        "description": "Numbers, then prose",
        "priority": "high",
        "due_date": "2031-05-17",
        "completed": True,
        "tags": ["work", "Q2", "work"],
    }

    created = client.post("/tasks", json=body, headers=headers)

    assert created.status_code == 201, created.text
    task = created.json()
    # The task and its tags in one statement through asyncpg, in autocommit; psycopg2 idle.
    assert app.statements["sync"] == []
    assert len(app.statements["async"]) == 1
    statement = " ".join(app.statements["async"][0].split())
    assert statement.startswith("WITH new_task AS (INSERT INTO tasks")
    assert "new_task_tags AS (INSERT INTO task_tags" in statement
    expected = {**body, "tags": ["q2", "work"], "version": 1}
    assert {key: task[key] for key in expected} == expected
    assert created.headers["Location"] == f"/tasks/{task['id']}"
    read = client.get(created.headers["Location"], headers=headers)
    assert (read.json(), read.headers["ETag"]) == (task, created.headers["ETag"])
    with RESOURCES.engine.connect() as connection:
        tags = connection.execute(
            text("SELECT tag, user_id FROM task_tags WHERE task_id = :id ORDER BY tag"),
            {"id": task["id"]},
        )
        assert [tuple(row) for row in tags] == [("q2", task["user_id"]), ("work", task["user_id"])]
    # The owner's cached answers went stale with it: the statistics count it at once.
    after = client.get("/tasks/stats", headers=headers)
    assert after.headers["X-Cache"] == "MISS"
    assert (after.json()["total"], after.json()["completed"]) == (1, 1)
    assert after.headers["ETag"] != before.headers["ETag"]
    untagged = client.post("/tasks", json={"title": "bare"}, headers=headers)
    assert (untagged.status_code, untagged.json()["tags"]) == (201, [])


def test_a_create_with_an_idempotency_key_is_stored_with_it_in_one_transaction(
    served: tuple[TestClient, Served],
) -> None:
    client, app = served
    headers = {**app.user(client), "Idempotency-Key": f"create-{uuid.uuid4().hex}"}
    app.forget_statements()

    first = client.post("/tasks", json={"title": "once", "tags": ["a"]}, headers=headers)
    again = client.post("/tasks", json={"title": "once", "tags": ["a"]}, headers=headers)

    assert (first.status_code, again.status_code) == (201, 201), again.text
    assert again.json() == first.json()
    assert len(client.get("/tasks", headers=headers).json()) == 1
    # The key's record is written with the task, in psycopg2's transaction.
    assert any(s.startswith("INSERT INTO tasks") for s in app.statements["sync"])
    assert not any(s.startswith("WITH new_task") for s in app.statements["async"])


def _outbox_jobs(task_id: int) -> list[tuple[str, Any]]:
    with RESOURCES.engine.connect() as connection:
        rows = connection.execute(
            select(OutboxJob.kind, OutboxJob.payload)
            .where(OutboxJob.payload["task_id"].as_integer() == task_id)
            .order_by(OutboxJob.id)
        )
        return [tuple(row) for row in rows]


def test_a_patch_is_one_statement_on_the_async_driver(served: tuple[TestClient, Served]) -> None:
    client, app = served
    headers = app.user(client)
    body = {"title": "Report", "description": "draft", "priority": "low", "tags": ["a", "b"]}
    created = client.post("/tasks", json=body, headers=headers).json()
    path = f"/tasks/{created['id']}"
    client.get("/tasks/stats", headers=headers)
    assert client.get("/tasks/stats", headers=headers).headers["X-Cache"] == "HIT"
    app.forget_statements()

    patched = client.patch(path, json={"description": "final", "priority": "high"}, headers=headers)

    assert patched.status_code == 200, patched.text
    # The task and its tags read, compared and written in one statement through asyncpg.
    assert app.statements["sync"] == []
    assert len(app.statements["async"]) == 1
    assert " ".join(app.statements["async"][0].split()).startswith("WITH seen AS (SELECT")
    task = patched.json()
    changed = {"description": "final", "priority": "high", "tags": ["a", "b"], "version": 2}
    assert {key: task[key] for key in changed} == changed
    assert task["updated_at"] > created["updated_at"]
    read = client.get(path, headers=headers)
    assert (read.json(), read.headers["ETag"]) == (task, patched.headers["ETag"])
    assert client.get("/tasks/stats", headers=headers).headers["X-Cache"] == "MISS"

    # The same values again change nothing: the same version, tag and cached statistics.
    client.get("/tasks/stats", headers=headers)
    again = client.patch(path, json={"description": "final"}, headers=headers)
    assert (again.status_code, again.json()) == (200, task)
    assert again.headers["ETag"] == patched.headers["ETag"]
    assert client.get("/tasks/stats", headers=headers).headers["X-Cache"] == "HIT"

    retagged = client.patch(path, json={"tags": ["C", "b", "c"]}, headers=headers)
    assert (retagged.json()["tags"], retagged.json()["version"]) == (["b", "c"], 3)
    with RESOURCES.engine.connect() as connection:
        tags = connection.scalars(
            text("SELECT tag FROM task_tags WHERE task_id = :id ORDER BY tag"), {"id": task["id"]}
        )
        assert list(tags) == ["b", "c"]
    untagged = client.patch(path, json={"tags": []}, headers=headers)
    assert (untagged.json()["tags"], untagged.json()["version"]) == ([], 4)
    assert client.get(path, headers=headers).json()["tags"] == []


def test_a_patch_on_the_async_driver_owes_one_notice_per_completion(
    served: tuple[TestClient, Served],
) -> None:
    client, app = served
    headers = app.user(client)
    task_id = client.post("/tasks", json={"title": "t"}, headers=headers).json()["id"]
    app.resources.runner.take()  # type: ignore[union-attr]

    done = client.patch(f"/tasks/{task_id}", json={"completed": True}, headers=headers)
    again = client.patch(
        f"/tasks/{task_id}", json={"completed": True, "title": "t2"}, headers=headers
    )

    assert (done.status_code, done.json()["completed"]) == (200, True)
    assert (again.status_code, again.json()["version"]) == (200, 3)
    assert not any(s.startswith("UPDATE") for s in app.statements["sync"])
    # Recorded with the completion, handed to the runner once committed; re-sending
    # `completed: true` completes nothing and owes nothing.
    assert _outbox_jobs(task_id) == [("task_completed", {"task_id": task_id})]
    assert len(app.resources.runner.take()) == 1  # type: ignore[union-attr]
    reopened = client.patch(f"/tasks/{task_id}", json={"completed": False}, headers=headers)
    completed_again = client.patch(f"/tasks/{task_id}", json={"completed": True}, headers=headers)
    assert (reopened.status_code, completed_again.status_code) == (200, 200)
    assert len(_outbox_jobs(task_id)) == 2


def test_a_patch_of_another_users_task_is_a_404_on_the_async_driver(
    served: tuple[TestClient, Served],
) -> None:
    client, app = served
    owner, stranger = app.user(client), app.user(client)
    task = client.post("/tasks", json={"title": "mine"}, headers=owner).json()

    theirs = client.patch(f"/tasks/{task['id']}", json={"title": "x"}, headers=stranger)
    missing = client.patch(f"/tasks/{task['id'] + 10_000_000}", json={"title": "x"}, headers=owner)

    _problem(theirs, 404, "task_not_found")
    _problem(missing, 404, "task_not_found")
    assert client.get(f"/tasks/{task['id']}", headers=owner).json() == task


def test_a_patch_with_if_match_is_checked_in_a_transaction(
    served: tuple[TestClient, Served],
) -> None:
    client, app = served
    headers = app.user(client)
    created = client.post("/tasks", json={"title": "t"}, headers=headers)
    path = f"/tasks/{created.json()['id']}"
    client.patch(path, json={"title": "moved on"}, headers=headers)
    app.forget_statements()

    stale = client.patch(
        path, json={"title": "u"}, headers={**headers, "If-Match": created.headers["ETag"]}
    )

    _problem(stale, 412, "precondition_failed")
    assert any("FOR UPDATE" in s for s in app.statements["sync"])
    assert client.get(path, headers=headers).json()["title"] == "moved on"


def test_a_patch_raced_by_another_write_is_redone_in_a_transaction(
    served: tuple[TestClient, Served],
) -> None:
    client, app = served
    headers = app.user(client)
    task = client.post("/tasks", json={"title": "t", "tags": ["a"]}, headers=headers).json()
    path = f"/tasks/{task['id']}"
    app.forget_statements()

    # Another writer holds the row: the patch's statement reads the task as it was, then waits
    # on the lock; once the other write commits, its version is no longer the one it read.
    with RESOURCES.engine.connect() as other:
        other.execute(
            text(
                "UPDATE tasks SET priority = 3, version = version + 1, updated_at = now() "
                "WHERE id = :id"
            ),
            {"id": task["id"]},
        )

        def commit_once_the_patch_waits() -> None:
            waiting = text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND query LIKE 'WITH seen AS%'"
            )
            deadline = time.monotonic() + 10
            with RESOURCES.engine.connect() as watcher:
                while not watcher.scalar(waiting) and time.monotonic() < deadline:
                    watcher.rollback()  # the activity is read once per transaction
                    time.sleep(0.02)
            other.commit()

        committer = threading.Thread(target=commit_once_the_patch_waits)
        committer.start()
        try:
            patched = client.patch(path, json={"description": "mine"}, headers=headers)
        finally:
            committer.join()

    assert patched.status_code == 200, patched.text
    # The one statement wrote nothing; the transaction wrote the patch over the other write.
    assert len(app.statements["async"]) == 1
    assert any(s.startswith("UPDATE tasks") for s in app.statements["sync"])
    both = {"description": "mine", "priority": "high", "tags": ["a"], "version": 3}
    assert {key: patched.json()[key] for key in both} == both
    assert client.get(path, headers=headers).json() == patched.json()


def test_lists_that_need_the_same_total_at_once_count_it_once(
    served: tuple[TestClient, Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, app = served
    headers = app.user(client)
    for title in ("a", "b", "c"):
        client.post("/tasks", json={"title": title, "tags": ["x"]}, headers=headers)
    counts: list[dict[str, Any]] = []
    uncounted: list[int] = []
    count_total, counted = task_service.count_total, task_service.UncountedPage.counted

    def slow_count(session: Session, **kwargs: Any) -> Any:
        counts.append(kwargs)
        # Awaited on the event loop: the other lists read their pages meanwhile.
        session.execute(text("SELECT pg_sleep(0.3)"))
        return count_total(session, **kwargs)

    def counted_spy(page: task_service.UncountedPage, count: Any) -> Any:
        uncounted.append(len(page.tasks))
        return counted(page, count)

    monkeypatch.setattr(task_service, "count_total", slow_count)
    monkeypatch.setattr(task_service.UncountedPage, "counted", counted_spy)
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: client.get("/tasks?tag=x", headers=headers), range(6)))

    assert [answer.status_code for answer in answers] == [200] * 6
    assert {answer.headers["X-Total-Count"] for answer in answers} == {"3"}
    assert len({answer.headers["ETag"] for answer in answers}) == 1
    # Several lists needed the total at once; one count served them all.
    assert len(uncounted) >= 2
    assert len(counts) == 1
    # A write makes the next list count again, once.
    client.post("/tasks", json={"title": "d", "tags": ["x"]}, headers=headers)
    assert client.get("/tasks?tag=x", headers=headers).headers["X-Total-Count"] == "4"
    assert client.get("/tasks?tag=x", headers=headers).headers["X-Total-Count"] == "4"
    assert len(counts) == 2


def _show_on_the_async_driver(settings: Settings, name: str) -> Any:
    """A server setting as a read on the async driver sees it (`SHOW name`), on an event loop
    and resources of its own."""
    resources = Resources(settings)

    def show(session: Session) -> Any:
        return session.execute(text(f"SHOW {name}")).scalar_one()

    async def read() -> Any:
        try:
            return await resources.read(show)
        finally:
            await resources.close_async()  # on the loop that opened the connection

    try:
        return anyio.run(read)
    finally:
        resources.close()


def test_the_async_driver_plans_each_statement_for_its_values() -> None:
    # As psycopg2's statements, which carry their values inline: never a generic plan.
    assert _show_on_the_async_driver(RESOURCES.settings, "plan_cache_mode") == "force_custom_plan"


def test_libpq_parameters_of_the_database_url_reach_the_async_driver_too() -> None:
    # sslmode would be a keyword argument asyncpg refuses; connect_timeout a server setting
    # PostgreSQL refuses. psycopg2 takes both.
    separator = "&" if "?" in TEST_DATABASE_URL else "?"
    url = f"{TEST_DATABASE_URL}{separator}sslmode=disable&connect_timeout=3"
    settings = RESOURCES.settings.model_copy(
        update={"database_url": Settings(database_url=url).database_url}
    )
    with RESOURCES.engine.connect() as connection:  # psycopg2, for comparison
        expected = connection.execute(text("SHOW statement_timeout")).scalar_one()
    assert _show_on_the_async_driver(settings, "statement_timeout") == expected


def test_another_users_task_is_a_404_on_the_async_driver(
    served: tuple[TestClient, Served],
) -> None:
    client, app = served
    owner, stranger = app.user(client), app.user(client)
    task_id = client.post("/tasks", json={"title": "mine"}, headers=owner).json()["id"]

    theirs = client.get(f"/tasks/{task_id}", headers=stranger)
    missing = client.get(f"/tasks/{task_id + 10_000_000}", headers=stranger)

    _problem(theirs, 404, "task_not_found")
    _problem(missing, 404, "task_not_found")
    assert theirs.json()["detail"].replace(str(task_id), "N") == missing.json()["detail"].replace(
        str(task_id + 10_000_000), "N"
    )


def test_a_list_is_read_on_the_async_driver_with_its_total_and_revalidated(
    served: tuple[TestClient, Served],
) -> None:
    client, app = served
    owner, stranger = app.user(client), app.user(client)
    created = [
        client.post("/tasks", json={"title": f"t{n}", "tags": ["a", f"n{n}"]}, headers=owner)
        for n in range(3)
    ]
    assert all(response.status_code == 201 for response in created)
    app.forget_statements()

    first = client.get("/tasks", params={"limit": 2, "sort_by": "id"}, headers=owner)
    counted = len(app.statements["async"])
    again = client.get("/tasks", params={"limit": 2, "sort_by": "id"}, headers=owner)

    assert first.status_code == 200, first.text
    assert first.json() == [response.json() for response in created[:2]]
    assert first.headers["X-Total-Count"] == again.headers["X-Total-Count"] == "3"
    assert 'rel="next"' in first.headers["Link"]
    assert again.json() == first.json()
    # The page, then its count; the second time the total came from the cache.
    assert counted == 2
    assert len(app.statements["async"]) == counted + 1
    assert app.statements["sync"] == []

    theirs = client.get("/tasks", headers=stranger)
    assert theirs.json() == []
    assert theirs.headers["X-Total-Count"] == "0"

    app.forget_statements()
    etag = {"If-None-Match": first.headers["ETag"]}
    polls = [
        client.get("/tasks", params={"limit": 2, "sort_by": "id"}, headers={**owner, **etag})
        for _ in range(2)
    ]
    assert [poll.status_code for poll in polls] == [304, 304]
    # The first poll read the counter (and cached it); the second needed no database.
    assert len(app.statements["async"]) == 1
    assert app.statements["sync"] == []


def test_statistics_are_computed_on_the_async_driver_and_cached(
    served: tuple[TestClient, Served],
) -> None:
    client, app = served
    headers = app.user(client)
    for title, priority, tags in [("a", "high", ["x"]), ("b", "low", ["x", "y"]), ("c", "low", [])]:
        payload = {"title": title, "priority": priority, "tags": tags}
        assert client.post("/tasks", json=payload, headers=headers).status_code == 201
    app.forget_statements()

    first = client.get("/tasks/stats", headers=headers)
    again = client.get("/tasks/stats", headers=headers)

    assert first.status_code == 200, first.text
    assert first.headers["X-Cache"] == "MISS"
    assert again.headers["X-Cache"] == "HIT"
    assert again.json() == first.json()
    stats = first.json()
    assert (stats["total"], stats["completed"], stats["incomplete"]) == (3, 0, 3)
    assert stats["by_priority"] == {"low": 2, "medium": 0, "high": 1}
    assert stats["by_tag"] == {"x": 2, "y": 1}
    assert app.statements["sync"] == []
    assert len(app.statements["async"]) == 1  # the totals and the tags; the hit read none

    task_id = client.get("/tasks", headers=headers).json()[0]["id"]
    patched = client.patch(f"/tasks/{task_id}", json={"completed": True}, headers=headers)
    assert patched.status_code == 200
    after = client.get("/tasks/stats", headers=headers)
    assert after.headers["X-Cache"] == "MISS"
    assert after.json()["completed"] == 1
    assert after.headers["ETag"] != first.headers["ETag"]


def test_postgresql_outage_on_the_async_driver_is_a_503_and_served_right_after() -> None:
    target = urlsplit(TEST_DATABASE_URL)
    with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        url = TEST_DATABASE_URL.replace(target.netloc.split("@")[-1], f"127.0.0.1:{proxy.port}", 1)
        settings = RESOURCES.settings.model_copy(
            update={
                "database_url": Settings(database_url=url).database_url,
                "db_connect_timeout_seconds": 1,
                "db_pool_size": 2,
            }
        )
        app = Served(settings)
        try:
            with TestClient(create_app(resources=app.resources)) as client:
                headers = app.user(client)
                task_id = client.post("/tasks", json={"title": "t"}, headers=headers).json()["id"]
                assert client.get(f"/tasks/{task_id}", headers=headers).status_code == 200

                proxy.close()  # the async pool's connections are dead; the caller is remembered
                for path in (f"/tasks/{task_id}", "/tasks/stats"):
                    down = client.get(path, headers=headers)
                    _problem(down, 503, "service_unavailable")
                    assert int(down.headers["Retry-After"]) >= 1
                _problem(
                    client.post("/tasks", json={"title": "t"}, headers=headers),
                    503,
                    "service_unavailable",
                )
                _problem(
                    client.patch(f"/tasks/{task_id}", json={"title": "u"}, headers=headers),
                    503,
                    "service_unavailable",
                )

                proxy.blackhole()  # accepts and never answers: the connect timeout decides
                _problem(
                    client.get(f"/tasks/{task_id}", headers=headers), 503, "service_unavailable"
                )

                proxy.reopen()
                back = client.get(f"/tasks/{task_id}", headers=headers)  # the very first after
                assert back.status_code == 200, back.text
                assert client.get("/tasks/stats", headers=headers).status_code == 200
                assert (
                    client.post("/tasks", json={"title": "t"}, headers=headers).status_code == 201
                )
                patched = client.patch(f"/tasks/{task_id}", json={"title": "u"}, headers=headers)
                assert (patched.status_code, patched.json()["title"]) == (200, "u")
        finally:
            proxy.reopen()
            app.remove()


def test_a_read_over_the_statement_timeout_is_cut_off_with_a_503(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = Served(RESOURCES.settings.model_copy(update={"db_statement_timeout_ms": 200}))

    def slow(session: Session, **_kwargs: Any) -> Any:
        session.execute(text("SELECT pg_sleep(30)"))

    try:
        with TestClient(create_app(resources=app.resources)) as client:
            headers = app.user(client)
            task_id = client.post("/tasks", json={"title": "t"}, headers=headers).json()["id"]
            monkeypatch.setattr(task_service, "read_owned_task", slow)
            started = time.monotonic()
            _problem(client.get(f"/tasks/{task_id}", headers=headers), 503, "service_unavailable")
            assert time.monotonic() - started < 10  # cut at 200 ms, not after 30 s
    finally:
        app.remove()


def test_a_cancelled_read_gives_its_connection_back() -> None:
    # One connection in the async driver's pool: a read that kept it would block the next.
    resources = Resources(RESOURCES.settings.model_copy(update={"db_pool_size": 2}))

    def slow(session: Session) -> None:
        session.execute(text("SELECT pg_sleep(5)"))

    def quick(session: Session) -> Any:
        return session.execute(text("SELECT 1")).scalar_one()

    async def cancel_then_read() -> Any:
        try:
            with anyio.move_on_after(0.2):  # a client gone mid-request cancels its read
                await resources.read(slow)
            with anyio.fail_after(3):
                return await resources.read(quick)
        finally:
            await resources.close_async()

    try:
        assert anyio.run(cancel_then_read) == 1
    finally:
        resources.close()
