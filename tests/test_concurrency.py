"""Concurrent writes against a served instance: no 5xx, races decided by the database, no lost updates.

Real threads against a real uvicorn process on the backend of the pass (its own SQLite file in
the embedded pass, the test PostgreSQL and Redis in the production pass), as clients hit `make
run` or `make serve`.
"""

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import delete

from db_models import User
from tests.conftest import BACKEND, PASSWORD, RESOURCES, TEST_DATABASE_URL, TEST_REDIS_URL
from tests.served_app import ServedApp, app_environment, migrate, served_app

THREADS = 16
# As the review ran it: 4 users x 240 requests from 16 threads (a fifth of them reads).
USERS = 4
STEPS = 240
# Every user this module registers starts with it, so the production pass can remove them.
PREFIX = f"cc{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApp]:
    directory = tmp_path_factory.mktemp("served")
    if BACKEND == "embedded":
        env = app_environment(f"sqlite:///{directory / 'served.db'}", directory)
        migrate(env)
    else:
        # The session fixture migrated this database; what the server commits is removed below.
        env = app_environment(TEST_DATABASE_URL, directory, REDIS_URL=TEST_REDIS_URL)
    try:
        with served_app(env, directory) as app:
            yield app
    finally:
        if BACKEND != "embedded":
            with RESOURCES.engine.begin() as connection:
                connection.execute(delete(User).where(User.username.startswith(PREFIX)))


@pytest.fixture
def http(served: ServedApp) -> Iterator[httpx.Client]:
    limits = httpx.Limits(max_connections=THREADS, max_keepalive_connections=THREADS)
    with httpx.Client(base_url=served.url, timeout=60, limits=limits) as client:
        yield client


def _name(label: str) -> str:
    return f"{PREFIX}-{label}-{uuid.uuid4().hex[:6]}"


def _user(http: httpx.Client) -> dict[str, str]:
    username = _name("u")
    body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
    response = http.post("/auth/register", json=body)
    assert response.status_code == 201, response.text
    response = http.post("/auth/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _all_at_once(count: int, send: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """Send `count` requests from as many threads, released together."""
    barrier = threading.Barrier(count)

    def go(index: int) -> httpx.Response:
        barrier.wait(timeout=30)
        return send(index)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(go, range(count)))


def _statuses(responses: list[httpx.Response]) -> list[int]:
    return sorted(response.status_code for response in responses)


# --- many users writing at once ------------------------------------------------------------


def test_concurrent_writes_of_many_users_never_fail(http: httpx.Client) -> None:
    users = [_user(http) for _ in range(USERS)]
    task_ids: list[list[int]] = []
    for headers in users:
        ids = []
        for number in range(4):
            response = http.post("/tasks", json={"title": f"seed {number}"}, headers=headers)
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        task_ids.append(ids)

    # Each write reads first (the user, the task) and then writes: the pattern that failed.
    def write(job: tuple[int, int]) -> tuple[str, httpx.Response]:
        user, step = job
        headers, ids = users[user], task_ids[user]
        task_id = ids[step % len(ids)]
        kind = step % 5
        body: dict[str, Any]
        if kind == 0:
            body = {"title": f"new {step}", "tags": [f"t{step % 3}"]}
            return "create", http.post("/tasks", json=body, headers=headers)
        if kind == 1:
            body = {"completed": step % 2 == 0, "description": f"step {step}"}
            return "patch", http.patch(f"/tasks/{task_id}", json=body, headers=headers)
        if kind == 2:
            tags = [f"t{step % 4}", "shared"]
            return "tags", http.post(f"/tasks/{task_id}/tags", json=tags, headers=headers)
        if kind == 3:
            body = {"task_ids": ids[:2], "updates": {"priority": "high"}}
            return "bulk", http.patch("/tasks/bulk", json=body, headers=headers)
        return "read", http.get("/tasks", params={"limit": 5}, headers=headers)

    jobs = [(user, step) for step in range(STEPS) for user in range(USERS)]
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(write, jobs))

    failed = [(kind, r.status_code, r.text[:200]) for kind, r in results if r.status_code >= 300]
    assert failed == []
    # Every acknowledged create is there.
    for headers, ids in zip(users, task_ids, strict=True):
        listing = http.get("/tasks", params={"limit": 100}, headers=headers)
        assert listing.status_code == 200
        created = sum(1 for step in range(STEPS) if step % 5 == 0)
        assert int(listing.headers["X-Total-Count"]) == len(ids) + created


def test_concurrent_registrations_of_one_name_give_one_201_and_409s(http: httpx.Client) -> None:
    username = _name("same")

    def register(index: int) -> httpx.Response:
        body = {"username": username, "email": f"{index}-{username}@example.com"}
        return http.post("/auth/register", json={**body, "password": PASSWORD})

    responses = _all_at_once(10, register)
    assert _statuses(responses) == [201] + [409] * 9
    codes = {r.json()["code"] for r in responses if r.status_code == 409}
    assert codes == {"duplicate_username"}


def test_concurrent_registrations_of_one_email_give_one_201_and_409s(http: httpx.Client) -> None:
    email = f"{_name('mail')}@example.com"

    def register(index: int) -> httpx.Response:
        body = {"username": _name(str(index)), "email": email, "password": PASSWORD}
        return http.post("/auth/register", json=body)

    responses = _all_at_once(10, register)
    assert _statuses(responses) == [201] + [409] * 9
    codes = {r.json()["code"] for r in responses if r.status_code == 409}
    assert codes == {"duplicate_email"}


# --- one task's tags written at once -------------------------------------------------------


def _new_task(http: httpx.Client, headers: dict[str, str]) -> int:
    response = http.post("/tasks", json={"title": "raced"}, headers=headers)
    assert response.status_code == 201, response.text
    task_id: int = response.json()["id"]
    return task_id


def test_adding_the_same_new_tag_at_once_is_no_error_and_leaks_nothing(
    http: httpx.Client, served: ServedApp
) -> None:
    headers = _user(http)
    task_id = _new_task(http, headers)
    # Distinctive text that a log line could only have taken from a request body.
    added = [f"zq{uuid.uuid4().hex[:12]}" for _ in range(5)]
    for tag in added:

        def add(_index: int, tag: str = tag) -> httpx.Response:
            return http.post(f"/tasks/{task_id}/tags", json=[tag], headers=headers)

        responses = _all_at_once(8, add)
        assert _statuses(responses) == [200] * 8, [r.text[:200] for r in responses]
        assert all(tag in r.json()["tags"] for r in responses)
    final = http.get(f"/tasks/{task_id}", headers=headers).json()
    assert final["tags"] == sorted(added)

    log = served.log()
    assert "Traceback" not in log
    assert "DETAIL" not in log
    leaked = [tag for tag in added if tag in log]
    assert leaked == []


def test_removing_one_tag_at_once_removes_it_once(http: httpx.Client) -> None:
    headers = _user(http)
    task_id = _new_task(http, headers)
    for round_number in range(3):
        tag = f"gone-{round_number}"
        response = http.post(f"/tasks/{task_id}/tags", json=[tag, "kept"], headers=headers)
        assert response.status_code == 200, response.text

        def remove(_index: int, tag: str = tag) -> httpx.Response:
            return http.delete(f"/tasks/{task_id}/tags/{tag}", headers=headers)

        responses = _all_at_once(8, remove)
        # Exactly one request removed it; for the others the task no longer has it.
        assert _statuses(responses) == [200] + [404] * 7, [r.text[:200] for r in responses]
        assert {r.json()["code"] for r in responses if r.status_code == 404} == {"tag_not_found"}
    final = http.get(f"/tasks/{task_id}", headers=headers).json()
    assert final["tags"] == ["kept"]


def test_replacing_the_tags_at_once_leaves_one_whole_set(http: httpx.Client) -> None:
    headers = _user(http)
    task_id = _new_task(http, headers)
    sets = [[f"set{index}-a", f"set{index}-b"] for index in range(8)]
    for _ in range(3):
        responses = _all_at_once(
            8,
            lambda i: http.patch(f"/tasks/{task_id}", json={"tags": sets[i]}, headers=headers),
        )
        assert _statuses(responses) == [200] * 8, [r.text[:200] for r in responses]
        # Last writer wins, whole: never a mixture of two requests' sets.
        final: Any = http.get(f"/tasks/{task_id}", headers=headers).json()["tags"]
        assert final in sets
