"""PATCH /tasks/bulk: one update for many tasks, all or nothing."""

from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection

from models import MAX_ID, BulkTaskUpdate
from redis_config import MemoryCache
from services import tasks as task_service
from tests.conftest import RESOURCES, AuthUser, register_and_login
from tests.job_helpers import HeldJobs
from tests.task_helpers import count_statements, create_task, insert_tasks


def bulk(client: TestClient, user: AuthUser, task_ids: list[Any], updates: Any) -> Any:
    return client.patch(
        "/tasks/bulk", json={"task_ids": task_ids, "updates": updates}, headers=user.headers
    )


def get(client: TestClient, user: AuthUser, task_id: int) -> dict[str, Any]:
    response = client.get(f"/tasks/{task_id}", headers=user.headers)
    assert response.status_code == 200
    task: dict[str, Any] = response.json()
    return task


def test_bulk_update_needs_a_token(client: TestClient) -> None:
    response = client.patch("/tasks/bulk", json={"task_ids": [1], "updates": {"completed": True}})
    assert response.status_code == 401


def test_updates_every_task_and_answers_in_request_order(
    client: TestClient, alice: AuthUser
) -> None:
    ids = [create_task(client, alice, title=f"t{n}")["id"] for n in range(4)]
    untouched = create_task(client, alice, title="other")
    wanted = [ids[2], ids[0], ids[3], ids[0], ids[2]]
    response = bulk(client, alice, wanted, {"completed": True, "priority": "high"})
    assert response.status_code == 200, response.text
    tasks = response.json()
    assert [t["id"] for t in tasks] == [ids[2], ids[0], ids[3]]
    assert all(t["completed"] and t["priority"] == "high" for t in tasks)
    assert [t["title"] for t in tasks] == ["t2", "t0", "t3"]
    for task_id in (ids[0], ids[2], ids[3]):
        stored = get(client, alice, task_id)
        assert stored["completed"] is True
        assert stored["priority"] == "high"
    assert get(client, alice, ids[1])["completed"] is False
    assert get(client, alice, untouched["id"]) == untouched


def test_updated_at_moves_and_unsent_fields_stay(client: TestClient, alice: AuthUser) -> None:
    task = create_task(client, alice, description="keep me", due_date="2030-01-01", tags=["a"])
    response = bulk(client, alice, [task["id"]], {"title": "Renamed"})
    updated = response.json()[0]
    assert updated["title"] == "Renamed"
    assert updated["description"] == "keep me"
    assert updated["due_date"] == "2030-01-01"
    assert updated["tags"] == ["a"]
    assert datetime.fromisoformat(updated["updated_at"]) > datetime.fromisoformat(
        task["updated_at"]
    )


def test_nullable_fields_can_be_cleared(client: TestClient, alice: AuthUser) -> None:
    task = create_task(client, alice, description="text", due_date="2030-01-01")
    response = bulk(client, alice, [task["id"]], {"description": None, "due_date": None})
    assert response.status_code == 200
    assert response.json()[0]["description"] is None
    assert response.json()[0]["due_date"] is None


def test_tags_are_replaced_on_every_task(client: TestClient, alice: AuthUser) -> None:
    first = create_task(client, alice, tags=["old", "keep"])
    second = create_task(client, alice)
    response = bulk(client, alice, [first["id"], second["id"]], {"tags": ["New", " keep "]})
    assert [t["tags"] for t in response.json()] == [["keep", "new"], ["keep", "new"]]
    assert get(client, alice, first["id"])["tags"] == ["keep", "new"]
    by_tag = client.get("/tasks", params={"tag": "old"}, headers=alice.headers).json()
    assert by_tag == []
    cleared = bulk(client, alice, [first["id"], second["id"]], {"tags": []})
    assert [t["tags"] for t in cleared.json()] == [[], []]
    assert get(client, alice, second["id"])["tags"] == []


def test_missing_and_foreign_ids_are_404_and_nothing_changes(
    client: TestClient, alice: AuthUser, bob: AuthUser
) -> None:
    mine = create_task(client, alice)
    theirs = create_task(client, bob)
    response = bulk(client, alice, [mine["id"], 999_999, theirs["id"]], {"completed": True})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "task_not_found"
    assert body["missing_ids"] == [999_999, theirs["id"]]
    assert get(client, alice, mine["id"]) == mine
    assert get(client, bob, theirs["id"]) == theirs


def test_an_empty_update_is_400(client: TestClient, alice: AuthUser) -> None:
    task = create_task(client, alice)
    response = bulk(client, alice, [task["id"]], {})
    assert response.status_code == 400
    assert response.json()["code"] == "empty_update"


@pytest.mark.parametrize(
    ("task_ids", "updates"),
    [
        ([], {"completed": True}),
        (list(range(1, 102)), {"completed": True}),
        ([0], {"completed": True}),
        ([MAX_ID + 1], {"completed": True}),
        ([-1], {"completed": True}),
        ("1", {"completed": True}),
        ([1], {"complete": True}),
        ([1], {"user_id": 2}),
        ([1], {"title": None}),
        ([1], {"title": "   "}),
        ([1], {"priority": "urgent"}),
        ([1], {"completed": "yes"}),
        ([1], {"tags": ["a/b"]}),
        ([1], {"tags": [f"t{n}" for n in range(21)]}),
        ([1], None),
        ([1], []),
    ],
)
def test_invalid_bodies_are_422(
    client: TestClient, alice: AuthUser, task_ids: Any, updates: Any
) -> None:
    create_task(client, alice)
    response = bulk(client, alice, task_ids, updates)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


def test_unknown_top_level_fields_are_422(client: TestClient, alice: AuthUser) -> None:
    task = create_task(client, alice)
    response = client.patch(
        "/tasks/bulk",
        json={"task_ids": [task["id"]], "updates": {"completed": True}, "all": True},
        headers=alice.headers,
    )
    assert response.status_code == 422


def test_a_hundred_tasks_at_once(client: TestClient, alice: AuthUser) -> None:
    ids = insert_tasks(alice.id, 100)
    response = bulk(client, alice, ids[::-1], {"priority": "low"})
    assert response.status_code == 200
    assert [t["id"] for t in response.json()] == ids[::-1]
    assert (
        client.get("/tasks", params={"priority": "low"}, headers=alice.headers).headers[
            "X-Total-Count"
        ]
        == "100"
    )


def test_reports_which_tasks_became_completed(alice: AuthUser) -> None:
    open_ids = insert_tasks(alice.id, 2)
    done_ids = insert_tasks(alice.id, 2, completed=True)
    wanted = [done_ids[0], open_ids[1], done_ids[1], open_ids[0]]
    with RESOURCES.sessions() as session:

        def run(updates: dict[str, Any]) -> list[int]:
            data = BulkTaskUpdate.model_validate({"task_ids": wanted, "updates": updates})
            result = task_service.bulk_update(
                session, owner_id=alice.id, data=data, cache=MemoryCache()
            )
            assert [task.id for task in result.updated] == wanted
            return result.newly_completed_ids

        assert run({"title": "renamed"}) == []
        assert run({"completed": True}) == [open_ids[1], open_ids[0]]
        assert run({"completed": True}) == []
        assert run({"completed": False}) == []
        session.rollback()


def test_bulk_costs_the_same_statements_for_10_and_100_tasks(
    client: TestClient, db_connection: Connection, held_jobs: HeldJobs
) -> None:
    counts = []
    for n in (10, 100):
        user = register_and_login(client, f"bulker{n}")
        ids = insert_tasks(user.id, n, tags=["old"])
        updates = {"completed": True, "priority": "high", "tags": ["x", "y"]}
        with count_statements(db_connection) as log:
            response = bulk(client, user, ids, updates)
        assert response.status_code == 200
        assert all(t["tags"] == ["x", "y"] and t["completed"] for t in response.json())
        counts.append(log.count)
        # One notice job per completed task, all recorded by the request's one outbox INSERT.
        assert len(held_jobs.take()) == n
    assert counts[0] == counts[1], counts
    # The request, from savepoint to release: the tasks and their tags read once to tell which
    # ones really change, the change counter raised, the outbox INSERT; its jobs run afterwards.
    assert counts[1] <= 13, counts
