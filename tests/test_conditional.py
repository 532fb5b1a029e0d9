"""Task versions, ETags and preconditions: If-Match on writes, If-None-Match on reads."""

import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import Connection

from config import Settings
from dependencies import get_request_cache
from main import create_app
from redis_config import RedisCache
from services import stats as stats_service
from tests.conftest import RESOURCES, AuthUser
from tests.problem_helpers import assert_problem
from tests.task_helpers import count_statements, create_task

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def get(client: TestClient, user: AuthUser, task_id: int, **headers: str) -> Response:
    response: Response = client.get(f"/tasks/{task_id}", headers={**user.headers, **headers})
    return response


def assert_not_modified(response: Response, etag: str) -> None:
    assert response.status_code == 304, response.text
    assert response.content == b""
    assert response.headers["ETag"] == etag
    assert "content-length" not in response.headers or response.headers["content-length"] == "0"


# --- version --------------------------------------------------------------------------------


class TestVersion:
    def test_a_new_task_is_version_1(self, client: TestClient, alice: AuthUser) -> None:
        task = create_task(client, alice)
        assert task["version"] == 1
        assert get(client, alice, task["id"]).json()["version"] == 1

    def test_every_change_raises_it_by_one(self, client: TestClient, alice: AuthUser) -> None:
        task_id = create_task(client, alice, tags=["a"])["id"]
        url = f"/tasks/{task_id}"
        steps = [
            client.patch(url, json={"title": "Renamed"}, headers=alice.headers),
            client.patch(url, json={"tags": ["b"]}, headers=alice.headers),
            client.post(f"{url}/tags", json=["c"], headers=alice.headers),
            client.delete(f"{url}/tags/b", headers=alice.headers),
            client.patch(
                "/tasks/bulk",
                json={"task_ids": [task_id], "updates": {"priority": "high"}},
                headers=alice.headers,
            ),
        ]
        versions = []
        for response in steps:
            assert response.status_code == 200, response.text
            body = response.json()
            versions.append((body[0] if isinstance(body, list) else body)["version"])
        assert versions == [2, 3, 4, 5, 6]
        assert get(client, alice, task_id).json()["version"] == 6

    def test_a_request_that_changes_nothing_leaves_it(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        task = create_task(client, alice, title="Same", priority="high", tags=["x", "y"])
        url = f"/tasks/{task['id']}"
        same = {"title": "Same", "priority": "high", "tags": ["y", "X"], "description": None}
        patched = client.patch(url, json=same, headers=alice.headers)
        assert patched.status_code == 200
        added = client.post(f"{url}/tags", json=["x"], headers=alice.headers)
        bulk = client.patch(
            "/tasks/bulk",
            json={"task_ids": [task["id"]], "updates": {"completed": False}},
            headers=alice.headers,
        )
        for response in (patched, added):
            assert response.json()["version"] == 1
            assert response.json()["updated_at"] == task["updated_at"]
        assert bulk.json()[0]["version"] == 1
        assert get(client, alice, task["id"]).json() == task

    def test_bulk_raises_only_the_tasks_it_changes(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        open_task = create_task(client, alice)
        done = create_task(client, alice, completed=True)
        tagged = create_task(client, alice, completed=True, tags=["keep"])
        response = client.patch(
            "/tasks/bulk",
            json={
                "task_ids": [open_task["id"], done["id"], tagged["id"]],
                "updates": {"completed": True},
            },
            headers=alice.headers,
        )
        assert response.status_code == 200
        assert [t["version"] for t in response.json()] == [2, 1, 1]
        assert response.json()[1]["updated_at"] == done["updated_at"]
        retag = client.patch(
            "/tasks/bulk",
            json={"task_ids": [open_task["id"], tagged["id"]], "updates": {"tags": ["keep"]}},
            headers=alice.headers,
        )
        assert [(t["version"], t["tags"]) for t in retag.json()] == [(3, ["keep"]), (1, ["keep"])]


# --- ETag on single tasks -------------------------------------------------------------------


class TestTaskETag:
    def test_sent_strong_by_every_response_with_one_task(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        created = client.post("/tasks", json={"title": "t"}, headers=alice.headers)
        task_id = created.json()["id"]
        url = f"/tasks/{task_id}"
        responses = [
            created,
            client.get(url, headers=alice.headers),
            client.patch(url, json={"title": "u"}, headers=alice.headers),
            client.post(f"{url}/tags", json=["a"], headers=alice.headers),
            client.delete(f"{url}/tags/a", headers=alice.headers),
        ]
        tags = []
        for response in responses:
            assert response.status_code in (200, 201), response.text
            etag = response.headers["ETag"]
            assert etag.startswith('"')
            assert etag.endswith('"')
            assert len(etag) > 2
            tags.append(etag)
        # Created and read: one version, one tag; then each write a new one, never reused.
        assert tags[0] == tags[1]
        assert len(set(tags[1:])) == 4

    def test_changes_exactly_when_the_version_changes(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        task_id = create_task(client, alice, title="Same")["id"]
        before = get(client, alice, task_id).headers["ETag"]
        noop = client.patch(f"/tasks/{task_id}", json={"title": "Same"}, headers=alice.headers)
        assert noop.headers["ETag"] == before
        changed = client.patch(f"/tasks/{task_id}", json={"title": "New"}, headers=alice.headers)
        assert changed.headers["ETag"] != before
        assert get(client, alice, task_id).headers["ETag"] == changed.headers["ETag"]

    def test_two_tasks_at_the_same_version_have_different_tags(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        first = client.post("/tasks", json={"title": "t"}, headers=alice.headers)
        second = client.post("/tasks", json={"title": "t"}, headers=alice.headers)
        assert first.headers["ETag"] != second.headers["ETag"]


class TestIfNoneMatch:
    @pytest.mark.parametrize(
        "header",
        [
            pytest.param("{etag}", id="current"),
            pytest.param("W/{etag}", id="weak-form"),
            pytest.param('"stale", {etag}', id="in-a-list"),
            pytest.param("*", id="star"),
        ],
    )
    def test_current_tag_is_304_with_no_body(
        self, client: TestClient, alice: AuthUser, header: str
    ) -> None:
        task_id = create_task(client, alice)["id"]
        etag = get(client, alice, task_id).headers["ETag"]
        response = get(client, alice, task_id, **{"If-None-Match": header.format(etag=etag)})
        assert_not_modified(response, etag)

    def test_stale_tag_gets_the_task(self, client: TestClient, alice: AuthUser) -> None:
        task_id = create_task(client, alice)["id"]
        old = get(client, alice, task_id).headers["ETag"]
        client.patch(f"/tasks/{task_id}", json={"title": "new"}, headers=alice.headers)
        response = get(client, alice, task_id, **{"If-None-Match": old})
        assert response.status_code == 200
        assert response.json()["title"] == "new"
        assert response.headers["ETag"] != old

    def test_another_users_task_is_404(
        self, client: TestClient, alice: AuthUser, bob: AuthUser
    ) -> None:
        task_id = create_task(client, alice)["id"]
        assert_problem(get(client, bob, task_id, **{"If-None-Match": "*"}), 404, "task_not_found")

    def test_needs_a_token(self, client: TestClient, alice: AuthUser) -> None:
        task_id = create_task(client, alice)["id"]
        response = client.get(f"/tasks/{task_id}", headers={"If-None-Match": "*"})
        assert_problem(response, 401, "not_authenticated")


# --- If-Match on writes ---------------------------------------------------------------------

# The four writes to one task that honour If-Match: (method, path suffix, JSON body).
WRITES = [
    pytest.param(("PATCH", "", {"title": "Changed"}), id="patch"),
    pytest.param(("DELETE", "", None), id="delete"),
    pytest.param(("POST", "/tags", ["new"]), id="add-tags"),
    pytest.param(("DELETE", "/tags/old", None), id="remove-tag"),
]


@dataclass(frozen=True)
class Write:
    """One of the `WRITES`, aimed at a task of Alice's tagged `old`."""

    method: str
    suffix: str
    body: Any
    task_id: int

    def send(self, client: TestClient, headers: dict[str, str]) -> Response:
        response: Response = client.request(
            self.method, f"/tasks/{self.task_id}{self.suffix}", json=self.body, headers=headers
        )
        return response


@pytest.fixture(params=WRITES)
def a_write(request: pytest.FixtureRequest, client: TestClient, alice: AuthUser) -> Write:
    """Each of the four writes, on a new task of Alice's tagged `old`."""
    method, suffix, body = request.param
    return Write(method, suffix, body, create_task(client, alice, tags=["old"])["id"])


def write(client: TestClient, user: AuthUser, a_write: Write, **headers: str) -> Response:
    return a_write.send(client, {**user.headers, **headers})


class TestIfMatch:
    @pytest.mark.parametrize(
        "header",
        [
            pytest.param('"not-the-tag"', id="other-tag"),
            pytest.param("W/{etag}", id="weak-never-matches"),
            pytest.param("", id="empty"),
            pytest.param("garbage", id="unquoted"),
        ],
    )
    def test_a_tag_that_does_not_match_is_412_and_changes_nothing(
        self, client: TestClient, alice: AuthUser, a_write: Write, header: str
    ) -> None:
        task_id = a_write.task_id
        before = get(client, alice, task_id)
        etag = before.headers["ETag"]
        response = write(client, alice, a_write, **{"If-Match": header.format(etag=etag)})
        assert_problem(response, 412, "precondition_failed")
        assert response.headers["ETag"] == etag
        after = get(client, alice, task_id)
        assert after.json() == before.json()
        assert after.headers["ETag"] == etag

    @pytest.mark.parametrize(
        "header",
        [
            pytest.param("{etag}", id="current"),
            pytest.param('"other", {etag}', id="in-a-list"),
            pytest.param("*", id="star"),
        ],
    )
    def test_a_matching_tag_lets_the_write_through(
        self, client: TestClient, alice: AuthUser, a_write: Write, header: str
    ) -> None:
        etag = get(client, alice, a_write.task_id).headers["ETag"]
        response = write(client, alice, a_write, **{"If-Match": header.format(etag=etag)})
        assert response.status_code in (200, 204), response.text
        if response.status_code == 200:
            assert response.headers["ETag"] != etag
            assert response.json()["version"] == 2

    def test_another_users_task_is_404_whatever_the_header(
        self, client: TestClient, alice: AuthUser, bob: AuthUser, a_write: Write
    ) -> None:
        etag = get(client, alice, a_write.task_id).headers["ETag"]
        for header in (etag, '"stale"', "*"):
            response = write(client, bob, a_write, **{"If-Match": header})
            assert_problem(response, 404, "task_not_found")
            assert "ETag" not in response.headers
        assert get(client, alice, a_write.task_id).headers["ETag"] == etag

    def test_needs_a_token(self, a_write: Write, client: TestClient) -> None:
        assert_problem(a_write.send(client, {"If-Match": "*"}), 401, "not_authenticated")

    def test_two_clients_editing_one_task_the_second_gets_412(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        task_id = create_task(client, alice, title="Draft")["id"]
        # Both devices read the task, then both edit it.
        phone = get(client, alice, task_id).headers["ETag"]
        laptop = get(client, alice, task_id).headers["ETag"]
        first = client.patch(
            f"/tasks/{task_id}",
            json={"title": "From the phone"},
            headers={**alice.headers, "If-Match": phone},
        )
        assert first.status_code == 200
        second = client.patch(
            f"/tasks/{task_id}",
            json={"title": "From the laptop", "priority": "low"},
            headers={**alice.headers, "If-Match": laptop},
        )
        assert_problem(second, 412, "precondition_failed")
        assert second.headers["ETag"] == first.headers["ETag"]
        task = get(client, alice, task_id).json()
        assert (task["title"], task["priority"], task["version"]) == ("From the phone", "medium", 2)
        # The second client re-reads and retries with the tag it was given: now it applies.
        retry = client.patch(
            f"/tasks/{task_id}",
            json={"title": "From the laptop"},
            headers={**alice.headers, "If-Match": second.headers["ETag"]},
        )
        assert retry.status_code == 200
        assert retry.json()["title"] == "From the laptop"

    def test_validation_still_applies_with_a_matching_tag(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        task_id = create_task(client, alice)["id"]
        etag = get(client, alice, task_id).headers["ETag"]
        response = client.patch(
            f"/tasks/{task_id}", json={"title": ""}, headers={**alice.headers, "If-Match": etag}
        )
        assert_problem(response, 422, "validation_error")


class TestRequireIfMatch:
    def test_a_write_without_if_match_is_428(
        self,
        client: TestClient,
        alice: AuthUser,
        settings_override: Callable[..., Settings],
        a_write: Write,
    ) -> None:
        task_id = a_write.task_id
        before = get(client, alice, task_id).json()
        settings_override(require_if_match=True)
        assert_problem(write(client, alice, a_write), 428, "precondition_required")
        assert get(client, alice, task_id).json() == before
        etag = get(client, alice, task_id).headers["ETag"]
        response = write(client, alice, a_write, **{"If-Match": etag})
        assert response.status_code in (200, 204), response.text

    def test_another_users_task_is_still_404(
        self,
        client: TestClient,
        bob: AuthUser,
        settings_override: Callable[..., Settings],
        a_write: Write,
    ) -> None:
        settings_override(require_if_match=True)
        assert_problem(write(client, bob, a_write), 404, "task_not_found")

    def test_other_routes_do_not_need_it(
        self,
        client: TestClient,
        alice: AuthUser,
        settings_override: Callable[..., Settings],
    ) -> None:
        settings_override(require_if_match=True)
        task_id = create_task(client, alice)["id"]
        assert get(client, alice, task_id).status_code == 200
        bulk = client.patch(
            "/tasks/bulk",
            json={"task_ids": [task_id], "updates": {"completed": True}},
            headers=alice.headers,
        )
        assert bulk.status_code == 200

    def test_off_by_default(self) -> None:
        assert Settings().require_if_match is False


# --- bulk if_match --------------------------------------------------------------------------


def bulk(client: TestClient, user: AuthUser, body: dict[str, Any]) -> Response:
    response: Response = client.patch("/tasks/bulk", json=body, headers=user.headers)
    return response


class TestBulkIfMatch:
    def test_current_tags_let_the_update_through(self, client: TestClient, alice: AuthUser) -> None:
        ids = [create_task(client, alice)["id"] for _ in range(2)]
        tags = {str(i): get(client, alice, i).headers["ETag"] for i in ids}
        response = bulk(
            client, alice, {"task_ids": ids, "updates": {"completed": True}, "if_match": tags}
        )
        assert response.status_code == 200, response.text
        assert [t["version"] for t in response.json()] == [2, 2]

    @pytest.mark.parametrize(
        "stale",
        [
            pytest.param('"stale"', id="other-tag"),
            pytest.param("W/{etag}", id="weak-never-matches"),
            pytest.param("{bare}", id="without-quotes"),
        ],
    )
    def test_a_stale_tag_is_412_with_conflicts_and_nothing_changes(
        self, client: TestClient, alice: AuthUser, stale: str
    ) -> None:
        first, second, third = (create_task(client, alice)["id"] for _ in range(3))
        tags = {i: get(client, alice, i).headers["ETag"] for i in (first, second, third)}
        client.patch(f"/tasks/{second}", json={"title": "moved on"}, headers=alice.headers)
        current_second = get(client, alice, second).headers["ETag"]
        bad = stale.format(etag=tags[third], bare=tags[third].strip('"'))
        response = bulk(
            client,
            alice,
            {
                "task_ids": [first, second, third],
                "updates": {"completed": True},
                "if_match": {str(first): tags[first], str(second): tags[second], str(third): bad},
            },
        )
        body = assert_problem(response, 412, "precondition_failed")
        assert body["conflicts"] == [
            {"id": second, "etag": current_second},
            {"id": third, "etag": tags[third]},
        ]
        for task_id in (first, second, third):
            assert get(client, alice, task_id).json()["completed"] is False
        assert get(client, alice, first).json()["version"] == 1

    def test_missing_ids_are_decided_before_tags(
        self, client: TestClient, alice: AuthUser, bob: AuthUser
    ) -> None:
        mine = create_task(client, alice)["id"]
        theirs = create_task(client, bob)["id"]
        response = bulk(
            client,
            alice,
            {
                "task_ids": [mine, theirs],
                "updates": {"completed": True},
                "if_match": {str(mine): '"stale"', str(theirs): '"stale"'},
            },
        )
        assert assert_problem(response, 404, "task_not_found")["missing_ids"] == [theirs]

    @pytest.mark.parametrize(
        "if_match",
        [
            pytest.param({"999": '"x"'}, id="not-in-task-ids"),
            pytest.param({"abc": '"x"'}, id="not-an-id"),
            pytest.param({"{id}": 5}, id="not-a-string"),
            pytest.param(["x"], id="not-an-object"),
        ],
    )
    def test_bad_if_match_is_422(self, client: TestClient, alice: AuthUser, if_match: Any) -> None:
        task_id = create_task(client, alice)["id"]
        if isinstance(if_match, dict):
            if_match = {key.format(id=task_id): value for key, value in if_match.items()}
        response = bulk(
            client,
            alice,
            {"task_ids": [task_id], "updates": {"completed": True}, "if_match": if_match},
        )
        body = assert_problem(response, 422, "validation_error")
        assert body["errors"][0]["loc"][:2] == ["body", "if_match"]
        assert get(client, alice, task_id).json()["completed"] is False


# --- weak ETags on GET /tasks and GET /tasks/stats -----------------------------------------

COLLECTIONS = [pytest.param("/tasks", id="list"), pytest.param("/tasks/stats", id="stats")]


def collection_tag(client: TestClient, user: AuthUser, url: str) -> str:
    response = client.get(url, headers=user.headers)
    assert response.status_code == 200, response.text
    etag: str = response.headers["ETag"]
    return etag


class TestCollectionETag:
    @pytest.mark.parametrize("url", COLLECTIONS)
    def test_weak_and_stable_while_nothing_changes(
        self, client: TestClient, alice: AuthUser, url: str
    ) -> None:
        create_task(client, alice)
        etag = collection_tag(client, alice, url)
        assert etag.startswith('W/"')
        assert etag.endswith('"')
        client.get("/tasks/stats", headers=alice.headers)
        client.get("/tasks?completed=true", headers=alice.headers)
        assert collection_tag(client, alice, url) == etag

    def test_differs_between_query_strings(self, client: TestClient, alice: AuthUser) -> None:
        create_task(client, alice)
        tags = {
            collection_tag(client, alice, url)
            for url in ("/tasks", "/tasks?limit=5", "/tasks?completed=true", "/tasks/stats")
        }
        assert len(tags) == 4

    @pytest.mark.parametrize("url", COLLECTIONS)
    @pytest.mark.parametrize("header", ["{etag}", "*", '"other", {etag}', "{strong}"])
    def test_if_none_match_current_is_304_with_no_body(
        self, client: TestClient, alice: AuthUser, url: str, header: str
    ) -> None:
        create_task(client, alice)
        etag = collection_tag(client, alice, url)
        value = header.format(etag=etag, strong=etag.removeprefix("W/"))
        response = client.get(url, headers={**alice.headers, "If-None-Match": value})
        assert_not_modified(response, etag)

    @pytest.mark.parametrize("url", COLLECTIONS)
    def test_the_tag_changes_after_every_kind_of_write(
        self, client: TestClient, alice: AuthUser, url: str
    ) -> None:
        task_id = create_task(client, alice, tags=["a"])["id"]
        other_id = create_task(client, alice)["id"]
        writes: dict[str, Callable[[], Response]] = {
            "create": lambda: client.post("/tasks", json={"title": "n"}, headers=alice.headers),
            "patch": lambda: client.patch(
                f"/tasks/{task_id}", json={"priority": "high"}, headers=alice.headers
            ),
            "add tags": lambda: client.post(
                f"/tasks/{task_id}/tags", json=["b"], headers=alice.headers
            ),
            "remove tag": lambda: client.delete(f"/tasks/{task_id}/tags/a", headers=alice.headers),
            "bulk": lambda: client.patch(
                "/tasks/bulk",
                json={"task_ids": [task_id, other_id], "updates": {"completed": True}},
                headers=alice.headers,
            ),
            "delete": lambda: client.delete(f"/tasks/{other_id}", headers=alice.headers),
        }
        seen = [collection_tag(client, alice, url)]
        for name, send in writes.items():
            before = seen[-1]
            old = client.get(url, headers={**alice.headers, "If-None-Match": before})
            assert old.status_code == 304, name
            assert send().status_code in (200, 201, 204), name
            revalidated = client.get(url, headers={**alice.headers, "If-None-Match": before})
            assert revalidated.status_code == 200, name
            assert revalidated.headers["ETag"] != before, name
            seen.append(revalidated.headers["ETag"])
        assert len(set(seen)) == len(seen)

    @pytest.mark.parametrize("url", COLLECTIONS)
    def test_stays_the_same_otherwise(
        self, client: TestClient, alice: AuthUser, bob: AuthUser, url: str
    ) -> None:
        task_id = create_task(client, alice, title="Same", tags=["a"])["id"]
        etag = collection_tag(client, alice, url)
        # Reads, requests that change nothing, refused writes, files, and another user's writes.
        client.get(f"/tasks/{task_id}", headers=alice.headers)
        client.patch(f"/tasks/{task_id}", json={"title": "Same"}, headers=alice.headers)
        client.post(f"/tasks/{task_id}/tags", json=["a"], headers=alice.headers)
        client.patch(f"/tasks/{task_id}", json={"title": ""}, headers=alice.headers)
        client.patch(
            f"/tasks/{task_id}", json={"title": "x"}, headers={**alice.headers, "If-Match": '"x"'}
        )
        client.delete(f"/tasks/{task_id}/tags/missing", headers=alice.headers)
        upload = client.post(
            f"/tasks/{task_id}/files",
            files={"file": ("a.png", PNG, "image/png")},
            headers=alice.headers,
        )
        assert upload.status_code == 201, upload.text
        client.delete(f"/files/{upload.json()['id']}", headers=alice.headers)
        create_task(client, bob)
        response = client.get(url, headers={**alice.headers, "If-None-Match": etag})
        assert_not_modified(response, etag)

    @pytest.mark.parametrize("url", COLLECTIONS)
    def test_changes_with_the_utc_date(
        self,
        client: TestClient,
        alice: AuthUser,
        url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        create_task(client, alice, due_date=date.today().isoformat())
        etag = collection_tag(client, alice, url)
        tomorrow = stats_service.utc_today() + timedelta(days=1)
        monkeypatch.setattr(stats_service, "utc_today", lambda: tomorrow)
        response = client.get(url, headers={**alice.headers, "If-None-Match": etag})
        assert response.status_code == 200
        assert response.headers["ETag"] != etag

    @pytest.mark.parametrize("url", COLLECTIONS)
    def test_each_user_has_their_own(
        self, client: TestClient, alice: AuthUser, bob: AuthUser, url: str
    ) -> None:
        create_task(client, alice)
        alices = collection_tag(client, alice, url)
        response = client.get(url, headers={**bob.headers, "If-None-Match": alices})
        assert response.status_code == 200
        assert response.headers["ETag"] != alices

    @pytest.mark.parametrize("url", COLLECTIONS)
    def test_needs_a_token(self, client: TestClient, url: str) -> None:
        assert_problem(client.get(url, headers={"If-None-Match": "*"}), 401, "not_authenticated")

    def test_a_bad_query_is_still_422(self, client: TestClient, alice: AuthUser) -> None:
        response = client.get("/tasks?limit=0", headers={**alice.headers, "If-None-Match": "*"})
        assert_problem(response, 422, "validation_error")

    def test_a_revalidated_list_reads_one_counter_not_the_tasks(
        self, client: TestClient, alice: AuthUser, db_connection: Connection
    ) -> None:
        create_task(client, alice, tags=["a"])
        etag = collection_tag(client, alice, "/tasks")
        with count_statements(db_connection) as log:
            response = client.get("/tasks", headers={**alice.headers, "If-None-Match": etag})
        assert response.status_code == 304
        queries = [s for s in log.statements if s.lstrip().upper().startswith("SELECT")]
        assert len(queries) == 1, log.statements
        assert "user_change_counters" in queries[0]
        assert not any("tasks" in s or "task_tags" in s for s in log.statements)

    def test_a_repeated_revalidation_of_a_list_needs_no_database(
        self, client: TestClient, alice: AuthUser, db_connection: Connection
    ) -> None:
        create_task(client, alice, tags=["a"])
        etag = collection_tag(client, alice, "/tasks")
        first = client.get("/tasks", headers={**alice.headers, "If-None-Match": etag})
        assert_not_modified(first, etag)
        # The first revalidation read the counter and cached it; the next ones need only that.
        with count_statements(db_connection) as log:
            for url in ("/tasks", "/tasks?limit=20"):
                tag = etag if url == "/tasks" else collection_tag(client, alice, url)
                again = client.get(url, headers={**alice.headers, "If-None-Match": tag})
                assert_not_modified(again, tag)
        # Only the full read of /tasks?limit=20 touched the database: its page (the total of
        # these filters is cached too).
        assert len(log.queries) == 1, log.statements
        assert log.queries[0].lstrip().startswith("SELECT tasks.id"), log.queries

    def test_a_list_costs_no_extra_round_trip_for_its_tag(
        self, client: TestClient, alice: AuthUser, db_connection: Connection
    ) -> None:
        create_task(client, alice, tags=["a"])
        with count_statements(db_connection) as log:
            response = client.get("/tasks", headers=alice.headers)
        assert response.headers["ETag"]
        queries = [s for s in log.statements if s.lstrip().upper().startswith("SELECT")]
        # The count (with the counter) and the page with its tags.
        assert len(queries) == 2, log.statements

    def test_revalidated_stats_from_the_cache_need_no_database(
        self, client: TestClient, alice: AuthUser, db_connection: Connection
    ) -> None:
        create_task(client, alice, tags=["a"])
        etag = collection_tag(client, alice, "/tasks/stats")
        with count_statements(db_connection) as log:
            response = client.get("/tasks/stats", headers={**alice.headers, "If-None-Match": etag})
        assert_not_modified(response, etag)
        assert log.statements == []

    @pytest.mark.parametrize("url", COLLECTIONS)
    def test_is_read_from_the_database_while_the_cache_is_down(
        self, client: TestClient, alice: AuthUser, app: FastAPI, url: str
    ) -> None:
        dead = RedisCache(
            f"redis://127.0.0.1:{_closed_port()}/0", timeout_seconds=0.05, key_prefix="tests"
        )
        app.dependency_overrides[get_request_cache] = lambda: dead
        try:
            create_task(client, alice)
            etag = collection_tag(client, alice, url)
            again = client.get(url, headers={**alice.headers, "If-None-Match": etag})
            assert_not_modified(again, etag)
            create_task(client, alice)
            changed = client.get(url, headers={**alice.headers, "If-None-Match": etag})
            assert changed.status_code == 200
            assert changed.headers["ETag"] != etag
            total = changed.json()["total"] if url == "/tasks/stats" else len(changed.json())
            assert total == 2
        finally:
            dead.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- files ---------------------------------------------------------------------------------


class TestFileETag:
    def test_download_sends_the_sha256_and_revalidates(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        task_id = create_task(client, alice)["id"]
        uploaded = client.post(
            f"/tasks/{task_id}/files",
            files={"file": ("a.png", PNG, "image/png")},
            headers=alice.headers,
        ).json()
        url = f"/files/{uploaded['id']}"
        download = client.get(url, headers=alice.headers)
        assert download.status_code == 200
        assert download.headers["ETag"] == f'"{uploaded["sha256"]}"'
        for header in (download.headers["ETag"], "*", f'W/"{uploaded["sha256"]}"'):
            response = client.get(url, headers={**alice.headers, "If-None-Match": header})
            assert_not_modified(response, download.headers["ETag"])
        stale = client.get(url, headers={**alice.headers, "If-None-Match": '"0000"'})
        assert stale.status_code == 200
        assert stale.content == PNG

    def test_another_users_file_is_404(
        self, client: TestClient, alice: AuthUser, bob: AuthUser
    ) -> None:
        task_id = create_task(client, alice)["id"]
        file_id = client.post(
            f"/tasks/{task_id}/files",
            files={"file": ("a.png", PNG, "image/png")},
            headers=alice.headers,
        ).json()["id"]
        response = client.get(f"/files/{file_id}", headers={**bob.headers, "If-None-Match": "*"})
        assert_problem(response, 404, "file_not_found")


# --- CORS ----------------------------------------------------------------------------------


def test_cors_exposes_and_allows_the_headers() -> None:
    origin = "https://app.example.com"
    client = TestClient(create_app(Settings(cors_origins=[origin]), resources=RESOURCES))
    exposed = client.get("/", headers={"Origin": origin}).headers["access-control-expose-headers"]
    assert {"etag", "idempotent-replayed"} <= {h.strip().lower() for h in exposed.split(",")}
    preflight = client.options(
        "/tasks/1",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "if-match, if-none-match, idempotency-key",
        },
    )
    assert preflight.status_code == 200
    allowed = {
        h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")
    }
    assert {"if-match", "if-none-match", "idempotency-key"} <= allowed
