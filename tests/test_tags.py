"""POST /tasks/{id}/tags and DELETE /tasks/{id}/tags/{tag}."""

from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from models import MAX_ID
from tests.conftest import AuthUser
from tests.task_helpers import create_task


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- POST /tasks/{id}/tags ----------------------------------------------------------------


def test_adding_tags_needs_a_token(client: TestClient, alice: AuthUser) -> None:
    task = create_task(client, alice)
    response = client.post(f"/tasks/{task['id']}/tags", json=["x"])
    assert response.status_code == 401


def test_adding_tags_to_another_users_task_is_404(
    client: TestClient, alice: AuthUser, bob: AuthUser
) -> None:
    task = create_task(client, bob, tags=["bobs"])
    response = client.post(f"/tasks/{task['id']}/tags", json=["x"], headers=alice.headers)
    assert response.status_code == 404
    assert response.json()["code"] == "task_not_found"
    assert client.get(f"/tasks/{task['id']}", headers=bob.headers).json()["tags"] == ["bobs"]


def test_adding_tags_to_a_missing_task_is_404(client: TestClient, alice: AuthUser) -> None:
    response = client.post("/tasks/999999/tags", json=["x"], headers=alice.headers)
    assert response.status_code == 404
    assert response.json()["code"] == "task_not_found"


def test_tags_are_trimmed_lowercased_deduplicated_and_merged(
    client: TestClient, alice: AuthUser
) -> None:
    task = create_task(client, alice, tags=["home"])
    response = client.post(
        f"/tasks/{task['id']}/tags",
        json=[" Work ", "WORK", "home", "urgent"],
        headers=alice.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["tags"] == ["home", "urgent", "work"]
    stored = client.get(f"/tasks/{task['id']}", headers=alice.headers).json()
    assert stored["tags"] == ["home", "urgent", "work"]
    assert parse_time(stored["updated_at"]) > parse_time(task["updated_at"])


@pytest.mark.parametrize("tags", [[], ["home"], ["HOME", " home "]])
def test_adding_nothing_new_is_a_no_op(
    client: TestClient, alice: AuthUser, tags: list[str]
) -> None:
    task = create_task(client, alice, tags=["home"])
    response = client.post(f"/tasks/{task['id']}/tags", json=tags, headers=alice.headers)
    assert response.status_code == 200
    assert response.json()["tags"] == ["home"]
    assert response.json()["updated_at"] == task["updated_at"]


@pytest.mark.parametrize(
    "body",
    [
        {"tags": ["x"]},
        "x",
        [1],
        [None],
        [["x"]],
        [""],
        ["   "],
        ["a/b"],
        ["t" * 51],
        ["nul\x00"],
        [f"t{n}" for n in range(21)],
        [f"t{n}" for n in range(101)],
    ],
)
def test_bad_tag_bodies_are_422(client: TestClient, alice: AuthUser, body: Any) -> None:
    task = create_task(client, alice)
    response = client.post(f"/tasks/{task['id']}/tags", json=body, headers=alice.headers)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert client.get(f"/tasks/{task['id']}", headers=alice.headers).json()["tags"] == []


def test_a_body_that_is_not_json_is_422(client: TestClient, alice: AuthUser) -> None:
    task = create_task(client, alice)
    response = client.post(
        f"/tasks/{task['id']}/tags",
        content=b"not json",
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422


def test_more_than_20_tags_in_all_is_422_and_changes_nothing(
    client: TestClient, alice: AuthUser
) -> None:
    existing = [f"old{n:02}" for n in range(15)]
    task = create_task(client, alice, tags=existing)
    new = [f"new{n}" for n in range(6)]
    response = client.post(f"/tasks/{task['id']}/tags", json=new, headers=alice.headers)
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "validation_error"
    assert body["errors"][0]["loc"] == ["body"]
    assert client.get(f"/tasks/{task['id']}", headers=alice.headers).json()["tags"] == existing
    exactly_20 = client.post(f"/tasks/{task['id']}/tags", json=new[:5], headers=alice.headers)
    assert exactly_20.status_code == 200
    assert len(exactly_20.json()["tags"]) == 20


@pytest.mark.parametrize("task_id", ["0", str(MAX_ID + 1), "abc"])
def test_out_of_range_task_id_is_422(client: TestClient, alice: AuthUser, task_id: str) -> None:
    response = client.post(f"/tasks/{task_id}/tags", json=["x"], headers=alice.headers)
    assert response.status_code == 422


def test_added_tags_are_found_by_the_tag_filter(client: TestClient, alice: AuthUser) -> None:
    task = create_task(client, alice)
    client.post(f"/tasks/{task['id']}/tags", json=["Later"], headers=alice.headers)
    found = client.get("/tasks", params={"tag": "later"}, headers=alice.headers).json()
    assert [t["id"] for t in found] == [task["id"]]


# --- DELETE /tasks/{id}/tags/{tag} --------------------------------------------------------


def test_removing_a_tag_needs_a_token(client: TestClient, alice: AuthUser) -> None:
    task = create_task(client, alice, tags=["x"])
    assert client.delete(f"/tasks/{task['id']}/tags/x").status_code == 401


def test_removing_a_tag_of_another_users_task_is_404(
    client: TestClient, alice: AuthUser, bob: AuthUser
) -> None:
    task = create_task(client, bob, tags=["x"])
    response = client.delete(f"/tasks/{task['id']}/tags/x", headers=alice.headers)
    assert response.status_code == 404
    assert response.json()["code"] == "task_not_found"
    assert client.get(f"/tasks/{task['id']}", headers=bob.headers).json()["tags"] == ["x"]


def test_removing_a_tag_the_task_lacks_is_404_tag_not_found(
    client: TestClient, alice: AuthUser
) -> None:
    task = create_task(client, alice, tags=["x"])
    response = client.delete(f"/tasks/{task['id']}/tags/y", headers=alice.headers)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "tag_not_found"


def test_removing_a_tag_normalizes_the_path(client: TestClient, alice: AuthUser) -> None:
    task = create_task(client, alice, tags=["work", "home"])
    response = client.delete(f"/tasks/{task['id']}/tags/%20Work%20", headers=alice.headers)
    assert response.status_code == 200, response.text
    assert response.json()["tags"] == ["home"]
    assert parse_time(response.json()["updated_at"]) > parse_time(task["updated_at"])
    stored = client.get(f"/tasks/{task['id']}", headers=alice.headers).json()
    assert stored["tags"] == ["home"]
    again = client.delete(f"/tasks/{task['id']}/tags/work", headers=alice.headers)
    assert again.json()["code"] == "tag_not_found"


@pytest.mark.parametrize("tag", ["t" * 51, "%20%20", "nul%00"])
def test_an_invalid_tag_in_the_path_is_422(client: TestClient, alice: AuthUser, tag: str) -> None:
    task = create_task(client, alice, tags=["x"])
    response = client.delete(f"/tasks/{task['id']}/tags/{tag}", headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
