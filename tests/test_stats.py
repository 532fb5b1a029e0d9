"""GET /tasks/stats: the numbers, the per-user cache, and its invalidation."""

from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from models import TaskCreate, TaskStats
from redis_config import MemoryCache
from services import stats as stats_service
from services import tasks as task_service
from tests.conftest import RESOURCES, AuthUser, register_and_login
from tests.task_helpers import count_statements, create_task, insert_tasks

EMPTY = {
    "total": 0,
    "completed": 0,
    "incomplete": 0,
    "completion_rate": 0.0,
    "overdue": 0,
    "by_priority": {"low": 0, "medium": 0, "high": 0},
    "by_tag": {},
}


def stats(client: TestClient, user: AuthUser) -> tuple[dict[str, Any], str]:
    response = client.get("/tasks/stats", headers=user.headers)
    assert response.status_code == 200, response.text
    return response.json(), response.headers["X-Cache"]


def test_stats_need_a_token(client: TestClient) -> None:
    response = client.get("/tasks/stats")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_stats_of_a_user_without_tasks(client: TestClient, alice: AuthUser) -> None:
    body, _ = stats(client, alice)
    assert body == EMPTY


def test_stats_count_every_field(client: TestClient, alice: AuthUser, bob: AuthUser) -> None:
    today = stats_service.utc_today()
    yesterday, tomorrow = today - timedelta(days=1), today + timedelta(days=1)
    create_task(client, alice, priority="high", completed=True, due_date=str(yesterday), tags=["a"])
    create_task(client, alice, priority="low", due_date=str(yesterday), tags=["a", "b"])
    create_task(client, alice, priority="low", due_date=str(today))
    create_task(client, alice, priority="low", due_date=str(tomorrow))
    create_task(client, alice, priority="low")
    create_task(client, alice, priority="high", tags=["B"])
    create_task(client, bob, priority="medium", due_date=str(yesterday), tags=["a"])
    body, _ = stats(client, alice)
    assert body == {
        "total": 6,
        "completed": 1,
        "incomplete": 5,
        "completion_rate": 0.1667,
        "overdue": 1,
        "by_priority": {"low": 4, "medium": 0, "high": 2},
        "by_tag": {"a": 2, "b": 2},
    }


def test_completion_rate_is_rounded_to_four_places(client: TestClient, alice: AuthUser) -> None:
    for completed in (True, False, False):
        create_task(client, alice, completed=completed)
    assert stats(client, alice)[0]["completion_rate"] == 0.3333


def test_cache_goes_miss_then_hit(client: TestClient, alice: AuthUser) -> None:
    create_task(client, alice)
    first, first_cache = stats(client, alice)
    second, second_cache = stats(client, alice)
    assert (first_cache, second_cache) == ("MISS", "HIT")
    assert first == second


def _create(client: TestClient, user: AuthUser, task: dict[str, Any]) -> None:
    create_task(client, user, priority="high", completed=True, tags=["new"])


def _patch(client: TestClient, user: AuthUser, task: dict[str, Any]) -> None:
    body = {"completed": True, "priority": "high"}
    response = client.patch(f"/tasks/{task['id']}", json=body, headers=user.headers)
    assert response.status_code == 200


def _delete(client: TestClient, user: AuthUser, task: dict[str, Any]) -> None:
    assert client.delete(f"/tasks/{task['id']}", headers=user.headers).status_code == 204


def _bulk(client: TestClient, user: AuthUser, task: dict[str, Any]) -> None:
    body = {"task_ids": [task["id"]], "updates": {"completed": True, "tags": ["new"]}}
    assert client.patch("/tasks/bulk", json=body, headers=user.headers).status_code == 200


def _add_tag(client: TestClient, user: AuthUser, task: dict[str, Any]) -> None:
    response = client.post(f"/tasks/{task['id']}/tags", json=["new"], headers=user.headers)
    assert response.status_code == 200


def _remove_tag(client: TestClient, user: AuthUser, task: dict[str, Any]) -> None:
    response = client.delete(f"/tasks/{task['id']}/tags/old", headers=user.headers)
    assert response.status_code == 200


Write = Callable[[TestClient, AuthUser, dict[str, Any]], None]


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (
            _create,
            {"total": 3, "completed": 1, "by_priority": {"low": 2, "medium": 0, "high": 1}},
        ),
        (_patch, {"completed": 1, "by_priority": {"low": 1, "medium": 0, "high": 1}}),
        (
            _delete,
            {"total": 1, "overdue": 0, "by_priority": {"low": 1, "medium": 0, "high": 0}},
        ),
        (_bulk, {"completed": 1, "overdue": 0, "by_tag": {"new": 1}}),
        (_add_tag, {"by_tag": {"new": 1, "old": 1}}),
        (_remove_tag, {"by_tag": {}}),
    ],
    ids=["create", "patch", "delete", "bulk", "add-tag", "remove-tag"],
)
def test_every_write_invalidates_the_cached_stats(
    client: TestClient, alice: AuthUser, write: Write, expected: dict[str, Any]
) -> None:
    yesterday = str(stats_service.utc_today() - timedelta(days=1))
    target = create_task(client, alice, priority="low", due_date=yesterday, tags=["old"])
    create_task(client, alice, priority="low")
    before, _ = stats(client, alice)
    assert stats(client, alice) == (before, "HIT")

    write(client, alice, target)

    after, cache = stats(client, alice)
    assert cache == "MISS"
    assert after != before
    for field, value in expected.items():
        assert after[field] == value, field
    assert stats(client, alice) == (after, "HIT")


def test_a_rejected_write_leaves_the_numbers_alone(client: TestClient, alice: AuthUser) -> None:
    create_task(client, alice)
    before, _ = stats(client, alice)
    response = client.post("/tasks", json={"title": ""}, headers=alice.headers)
    assert response.status_code == 422
    assert stats(client, alice)[0] == before


def test_cache_entries_of_two_users_never_mix(
    client: TestClient, alice: AuthUser, bob: AuthUser
) -> None:
    create_task(client, alice, tags=["alice"])
    create_task(client, bob, completed=True)
    create_task(client, bob)
    alice_stats, alice_cache = stats(client, alice)
    bob_stats, bob_cache = stats(client, bob)
    assert (alice_cache, bob_cache) == ("MISS", "MISS")
    assert (alice_stats["total"], alice_stats["by_tag"]) == (1, {"alice": 1})
    assert (bob_stats["total"], bob_stats["completed"], bob_stats["by_tag"]) == (2, 1, {})
    assert stats(client, alice) == (alice_stats, "HIT")
    assert stats(client, bob) == (bob_stats, "HIT")

    create_task(client, bob)
    assert stats(client, alice) == (alice_stats, "HIT")
    assert stats(client, bob)[0]["total"] == 3


def test_cached_stats_never_survive_the_midnight_that_changes_overdue(
    client: TestClient, alice: AuthUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = date(2030, 3, 10)
    monkeypatch.setattr(stats_service, "utc_today", lambda: day)
    create_task(client, alice, due_date=str(day))
    assert stats(client, alice)[0]["overdue"] == 0
    assert stats(client, alice)[1] == "HIT"

    monkeypatch.setattr(stats_service, "utc_today", lambda: day + timedelta(days=1))
    body, cache = stats(client, alice)
    assert (body["overdue"], cache) == (1, "MISS")


def test_a_result_computed_before_a_write_is_never_served_after_it(
    alice: AuthUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: a computation reads the database, a write commits, then the result is stored."""
    cache = RESOURCES.cache
    original = stats_service.compute_stats

    def compute_then_let_a_write_commit(
        session: Session, *, owner_id: int, today: date
    ) -> tuple[TaskStats, int]:
        result = original(session, owner_id=owner_id, today=today)
        with RESOURCES.sessions() as writer:
            task_service.create_task(
                writer, owner_id=alice.id, data=TaskCreate(title="x"), cache=cache
            )
            writer.commit()
        return result

    with RESOURCES.sessions() as session:
        monkeypatch.setattr(stats_service, "compute_stats", compute_then_let_a_write_commit)
        raced = stats_service.get_stats(session, owner_id=alice.id, cache=cache, ttl_seconds=60)
        monkeypatch.undo()
        assert (raced.stats.total, raced.cache_hit) == (0, False)

        after = stats_service.get_stats(session, owner_id=alice.id, cache=cache, ttl_seconds=60)
        assert (after.stats.total, after.cache_hit) == (1, False)
        again = stats_service.get_stats(session, owner_id=alice.id, cache=cache, ttl_seconds=60)
        assert (again.stats.total, again.cache_hit) == (1, True)


def test_versions_are_bumped_by_the_commit_not_by_a_savepoint(alice: AuthUser) -> None:
    cache = MemoryCache()
    key = f"stats:version:{alice.id}"
    with RESOURCES.sessions() as session:
        task_service.create_task(
            session, owner_id=alice.id, data=TaskCreate(title="x"), cache=cache
        )
        with session.begin_nested():
            pass
        assert cache.counter(key) == 0
        session.commit()
        assert cache.counter(key) == 1
        session.commit()
        assert cache.counter(key) == 1


def test_stats_cost_the_same_statements_for_10_and_100_tasks(
    client: TestClient, db_connection: Connection
) -> None:
    counts = []
    for n in (10, 100):
        user = register_and_login(client, f"counter{n}")
        insert_tasks(user.id, n, tags=["a", "b"])
        with count_statements(db_connection) as log:
            body, cache = stats(client, user)
        assert (body["total"], body["by_tag"], cache) == (n, {"a": n, "b": n}, "MISS")
        counts.append(len(log.queries))
        with count_statements(db_connection) as log:
            assert stats(client, user)[1] == "HIT"
        assert not any("tasks" in statement for statement in log.statements)
    assert counts[0] == counts[1], counts
    # The caller's session (first request of the token), the totals, the tags.
    assert counts[1] <= 3, counts
