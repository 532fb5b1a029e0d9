"""Idempotency-Key on POST /tasks, PATCH /tasks/bulk, POST /tasks/{id}/tags and uploads."""

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import Connection, Engine, delete, func, select, text, update
from sqlalchemy.orm import Session

import db_config
from alembic import command
from config import Settings, get_settings
from db_models import IdempotencyKey, Task, User, utcnow
from exceptions import InvalidIdempotencyKeyError
from idempotent_requests import IDEMPOTENCY_KEY_PATTERN, parse_key
from tests.conftest import (
    BACKEND,
    RESOURCES,
    AuthUser,
    alembic_config,
    register_and_login,
    verified,
)
from tests.problem_helpers import assert_problem
from tests.task_helpers import create_task

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
OTHER_PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 64


def keyed(user: AuthUser, key: str | bytes, **extra: str) -> dict[str, Any]:
    return {**user.headers, "Idempotency-Key": key, **extra}


def task_count(client: TestClient, user: AuthUser, **filters: str) -> int:
    response = client.get("/tasks", params=filters, headers=user.headers)
    return int(response.headers["X-Total-Count"])


def notices(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [
        record.task_id  # type: ignore[attr-defined]
        for record in caplog.records
        if getattr(record, "event", None) == "task_completed"
    ]


def stored_keys() -> list[tuple[int, str]]:
    with RESOURCES.sessions() as session:
        rows = session.execute(select(IdempotencyKey.user_id, IdempotencyKey.key)).all()
        return [(user_id, key) for user_id, key in rows]


def age_keys(hours: float) -> None:
    """Make every stored result older, as time passing would."""
    with RESOURCES.sessions() as session:
        session.execute(update(IdempotencyKey).values(created_at=utcnow() - timedelta(hours=hours)))
        session.commit()


# The four routes that accept a key, as (name, how to send the request once).
Send = Callable[[TestClient, AuthUser, dict[str, Any], int], Response]


def _create(client: TestClient, user: AuthUser, headers: dict[str, Any], task_id: int) -> Response:
    response: Response = client.post("/tasks", json={"title": "Buy milk"}, headers=headers)
    return response


def _bulk(client: TestClient, user: AuthUser, headers: dict[str, Any], task_id: int) -> Response:
    response: Response = client.patch(
        "/tasks/bulk", json={"task_ids": [task_id], "updates": {"completed": True}}, headers=headers
    )
    return response


def _tags(client: TestClient, user: AuthUser, headers: dict[str, Any], task_id: int) -> Response:
    response: Response = client.post(f"/tasks/{task_id}/tags", json=["urgent"], headers=headers)
    return response


def _upload(client: TestClient, user: AuthUser, headers: dict[str, Any], task_id: int) -> Response:
    response: Response = client.post(
        f"/tasks/{task_id}/files", files={"file": ("a.png", PNG, "image/png")}, headers=headers
    )
    return response


ROUTES = [
    pytest.param(_create, 201, id="create"),
    pytest.param(_bulk, 200, id="bulk"),
    pytest.param(_tags, 200, id="tags"),
    pytest.param(_upload, 201, id="upload"),
]


def state(client: TestClient, user: AuthUser, task_id: int) -> tuple[Any, ...]:
    """Everything the four routes could change."""
    tasks = client.get("/tasks", headers=user.headers).json()
    files = client.get(f"/tasks/{task_id}/files", headers=user.headers).json()
    return tasks, files


# --- the key ------------------------------------------------------------------------------


class TestKeyFormat:
    @pytest.mark.parametrize(
        "key",
        [
            pytest.param("", id="empty"),
            pytest.param("a" * 256, id="too-long"),
            pytest.param("a b", id="space"),
            pytest.param("tab\there", id="tab"),
            pytest.param("del\x7f", id="control"),
            pytest.param("ключ".encode(), id="not-ascii"),
            pytest.param('"unterminated', id="open-quote"),
            pytest.param('"bad\\escape"', id="bad-escape"),
            pytest.param('""', id="empty-quoted"),
            pytest.param('"' + "a" * 256 + '"', id="quoted-too-long"),
        ],
    )
    @pytest.mark.parametrize(("send", "status"), ROUTES)
    def test_a_malformed_key_is_400_and_does_nothing(
        self,
        client: TestClient,
        alice: AuthUser,
        send: Send,
        status: int,
        key: str | bytes,
    ) -> None:
        task_id = create_task(client, alice)["id"]
        before = state(client, alice, task_id)
        assert_problem(
            send(client, alice, keyed(alice, key), task_id), 400, "invalid_idempotency_key"
        )
        assert state(client, alice, task_id) == before
        assert stored_keys() == []

    @pytest.mark.parametrize(
        "key",
        [
            pytest.param("a" * 255, id="255-characters"),
            pytest.param("!#$%&'()*+,-./:;<=>?@[]^_`{|}~", id="punctuation"),
            pytest.param(str(uuid.uuid4()), id="uuid"),
            pytest.param('"' + "a" * 255 + '"', id="quoted-255"),
            pytest.param('"with \\"escapes\\" \\\\ and spaces"', id="quoted-escapes"),
        ],
    )
    def test_visible_ascii_or_a_quoted_string_is_accepted(
        self, client: TestClient, alice: AuthUser, key: str
    ) -> None:
        first = client.post("/tasks", json={"title": "t"}, headers=keyed(alice, key))
        assert first.status_code == 201, first.text
        again = client.post("/tasks", json={"title": "t"}, headers=keyed(alice, key))
        assert again.headers["Idempotent-Replayed"] == "true"
        assert task_count(client, alice) == 1

    def test_quoted_and_bare_are_the_same_key(self, client: TestClient, alice: AuthUser) -> None:
        first = client.post("/tasks", json={"title": "t"}, headers=keyed(alice, "k-1"))
        again = client.post("/tasks", json={"title": "t"}, headers=keyed(alice, '"k-1"'))
        assert again.status_code == 201
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json() == first.json()
        different = client.post("/tasks", json={"title": "u"}, headers=keyed(alice, '"k-1"'))
        assert_problem(different, 422, "idempotency_key_reused")


# --- replays ------------------------------------------------------------------------------


class TestReplay:
    @pytest.mark.parametrize(("send", "status"), ROUTES)
    def test_a_repeat_answers_the_stored_result_and_does_nothing_again(
        self, client: TestClient, alice: AuthUser, send: Send, status: int
    ) -> None:
        task_id = create_task(client, alice)["id"]
        first = send(client, alice, keyed(alice, "retry-1"), task_id)
        assert first.status_code == status, first.text
        assert "Idempotent-Replayed" not in first.headers
        after_first = state(client, alice, task_id)
        again = send(client, alice, keyed(alice, "retry-1"), task_id)
        assert again.status_code == status
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.headers["content-type"] == "application/json"
        assert again.json() == first.json()
        for header in ("Location", "ETag"):
            assert again.headers.get(header) == first.headers.get(header), header
        assert state(client, alice, task_id) == after_first

    def test_create_answers_location_and_etag_again(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        first = client.post("/tasks", json={"title": "t"}, headers=keyed(alice, "c"))
        again = client.post("/tasks", json={"title": "t"}, headers=keyed(alice, "c"))
        assert (
            again.headers["Location"] == first.headers["Location"] == f"/tasks/{first.json()['id']}"
        )
        assert again.headers["ETag"] == first.headers["ETag"]

    def test_a_create_retried_after_a_lost_response_leaves_one_task(
        self, client: TestClient, alice: AuthUser, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="background_tasks")
        body = {"title": "Pay rent", "completed": True}
        client.post("/tasks", json=body, headers=keyed(alice, "rent"))  # the answer is lost
        for _ in range(3):
            retry = client.post("/tasks", json=body, headers=keyed(alice, "rent"))
            assert retry.status_code == 201
        assert task_count(client, alice) == 1
        assert notices(caplog) == []

    def test_a_bulk_completion_retried_sends_one_notice(
        self,
        client: TestClient,
        alice: AuthUser,
        caplog: pytest.LogCaptureFixture,
        db_connection: Connection,
    ) -> None:
        verified(alice, db_connection)
        ids = [create_task(client, alice)["id"] for _ in range(2)]
        caplog.set_level(logging.INFO, logger="background_tasks")
        body = {"task_ids": ids, "updates": {"completed": True}}
        for _ in range(3):
            response = client.patch("/tasks/bulk", json=body, headers=keyed(alice, "done"))
            assert response.status_code == 200
        assert sorted(notices(caplog)) == ids
        assert [t["version"] for t in response.json()] == [2, 2]

    def test_the_stored_result_is_replayed_even_after_later_changes(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        task_id = create_task(client, alice)["id"]
        first = client.post(f"/tasks/{task_id}/tags", json=["a"], headers=keyed(alice, "t"))
        client.delete(f"/tasks/{task_id}/tags/a", headers=alice.headers)
        again = client.post(f"/tasks/{task_id}/tags", json=["a"], headers=keyed(alice, "t"))
        assert again.json() == first.json()
        # The tag removed since stays removed: the replay repeats the answer, not the work.
        assert client.get(f"/tasks/{task_id}", headers=alice.headers).json()["tags"] == []

    def test_a_replay_comes_before_the_if_match_check(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        task_id = create_task(client, alice)["id"]
        etag = client.get(f"/tasks/{task_id}", headers=alice.headers).headers["ETag"]
        headers = keyed(alice, "tag-once", **{"If-Match": etag})
        first = client.post(f"/tasks/{task_id}/tags", json=["a"], headers=headers)
        assert first.status_code == 200
        # The same request again: its If-Match is stale now, but it is a repeat, not a new edit.
        again = client.post(f"/tasks/{task_id}/tags", json=["a"], headers=headers)
        assert again.status_code == 200
        assert again.headers["Idempotent-Replayed"] == "true"
        new_key = keyed(alice, "tag-twice", **{"If-Match": etag})
        stale = client.post(f"/tasks/{task_id}/tags", json=["b"], headers=new_key)
        assert_problem(stale, 412, "precondition_failed")

    def test_an_upload_replay_stores_no_second_file(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        task_id = create_task(client, alice)["id"]
        directory: Path = get_settings().upload_dir

        def on_disk() -> int:
            return len(list(directory.iterdir())) if directory.exists() else 0

        first = _upload(client, alice, keyed(alice, "up"), task_id)
        files_on_disk = on_disk()
        again = _upload(client, alice, keyed(alice, "up"), task_id)
        assert again.json() == first.json()
        assert on_disk() == files_on_disk
        listed = client.get(f"/tasks/{task_id}/files", headers=alice.headers).json()
        assert [f["id"] for f in listed] == [first.json()["id"]]

    def test_keys_belong_to_their_user(
        self, client: TestClient, alice: AuthUser, bob: AuthUser
    ) -> None:
        mine = client.post("/tasks", json={"title": "t"}, headers=keyed(alice, "shared"))
        theirs = client.post("/tasks", json={"title": "t"}, headers=keyed(bob, "shared"))
        assert theirs.status_code == 201
        assert "Idempotent-Replayed" not in theirs.headers
        assert theirs.json()["id"] != mine.json()["id"]
        assert theirs.json()["user_id"] == bob.id
        other_body = client.post("/tasks", json={"title": "x"}, headers=keyed(bob, "other"))
        assert other_body.status_code == 201
        assert task_count(client, alice) == task_count(client, bob) - 1 == 1

    def test_without_a_key_every_request_is_new(self, client: TestClient, alice: AuthUser) -> None:
        for _ in range(2):
            assert (
                client.post("/tasks", json={"title": "t"}, headers=alice.headers).status_code == 201
            )
        assert task_count(client, alice) == 2
        assert stored_keys() == []

    @pytest.mark.parametrize(("send", "status"), ROUTES)
    def test_needs_a_token(
        self, client: TestClient, alice: AuthUser, send: Send, status: int
    ) -> None:
        task_id = create_task(client, alice)["id"]
        response = send(client, alice, {"Idempotency-Key": "k"}, task_id)
        assert_problem(response, 401, "not_authenticated")

    @pytest.mark.parametrize(("send", "status"), [p for p in ROUTES if p.id != "create"])
    def test_another_users_task_is_404_and_the_key_stays_unused(
        self, client: TestClient, alice: AuthUser, bob: AuthUser, send: Send, status: int
    ) -> None:
        task_id = create_task(client, alice)["id"]
        response = send(client, bob, keyed(bob, "k"), task_id)
        assert_problem(response, 404, "task_not_found")
        assert stored_keys() == []


# --- a key reused for another request -------------------------------------------------------


class TestReuse:
    @pytest.mark.parametrize(
        "second",
        [
            pytest.param(
                lambda c, h, _: c.post("/tasks", json={"title": "Other"}, headers=h), id="body"
            ),
            pytest.param(
                lambda c, h, t: c.post(f"/tasks/{t}/tags", json=["x"], headers=h), id="path"
            ),
            pytest.param(
                lambda c, h, t: c.patch(
                    "/tasks/bulk",
                    json={"task_ids": [t], "updates": {"title": "Buy milk"}},
                    headers=h,
                ),
                id="method",
            ),
        ],
    )
    def test_a_different_request_with_the_same_key_is_422(
        self, client: TestClient, alice: AuthUser, second: Callable[..., Response]
    ) -> None:
        task_id = create_task(client, alice)["id"]
        assert _create(client, alice, keyed(alice, "once"), task_id).status_code == 201
        before = state(client, alice, task_id)
        body = assert_problem(
            second(client, keyed(alice, "once"), task_id), 422, "idempotency_key_reused"
        )
        assert body["errors"] == [
            {
                "loc": ["header", "Idempotency-Key"],
                "msg": "this key was already used for a different request; use a new key",
                "type": "idempotency_key_reused",
            }
        ]
        assert state(client, alice, task_id) == before

    def test_an_upload_of_other_bytes_with_the_same_key_is_422(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        task_id = create_task(client, alice)["id"]
        assert _upload(client, alice, keyed(alice, "up"), task_id).status_code == 201
        other = client.post(
            f"/tasks/{task_id}/files",
            files={"file": ("a.png", OTHER_PNG, "image/png")},
            headers=keyed(alice, "up"),
        )
        assert_problem(other, 422, "idempotency_key_reused")
        renamed = client.post(
            f"/tasks/{task_id}/files",
            files={"file": ("b.png", PNG, "image/png")},
            headers=keyed(alice, "up"),
        )
        assert_problem(renamed, 422, "idempotency_key_reused")
        assert len(client.get(f"/tasks/{task_id}/files", headers=alice.headers).json()) == 1

    @pytest.mark.parametrize(
        "failing",
        [
            pytest.param({"title": ""}, id="validation"),
            pytest.param({"title": "t", "user_id": 5}, id="unknown-field"),
        ],
    )
    def test_an_error_is_not_stored(
        self, client: TestClient, alice: AuthUser, failing: dict[str, Any]
    ) -> None:
        response = client.post("/tasks", json=failing, headers=keyed(alice, "k"))
        assert response.status_code == 422
        assert stored_keys() == []
        # The key is unused: the next request with it is new, whatever its body.
        fixed = client.post("/tasks", json={"title": "fixed"}, headers=keyed(alice, "k"))
        assert fixed.status_code == 201
        assert "Idempotent-Replayed" not in fixed.headers

    def test_a_refused_bulk_update_is_not_stored(self, client: TestClient, alice: AuthUser) -> None:
        task_id = create_task(client, alice)["id"]
        stale = {
            "task_ids": [task_id],
            "updates": {"completed": True},
            "if_match": {str(task_id): '"x"'},
        }
        assert_problem(
            client.patch("/tasks/bulk", json=stale, headers=keyed(alice, "b")),
            412,
            "precondition_failed",
        )
        fresh = {"task_ids": [task_id], "updates": {"completed": True}}
        response = client.patch("/tasks/bulk", json=fresh, headers=keyed(alice, "b"))
        assert response.status_code == 200
        assert response.json()[0]["completed"] is True


# --- expiry ----------------------------------------------------------------------------------


class TestExpiry:
    def test_within_the_ttl_the_key_is_remembered(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        client.post("/tasks", json={"title": "t"}, headers=keyed(alice, "k"))
        age_keys(23.5)
        again = client.post("/tasks", json={"title": "t"}, headers=keyed(alice, "k"))
        assert again.headers["Idempotent-Replayed"] == "true"

    def test_after_the_ttl_the_key_is_new_and_its_result_gone(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        client.post("/tasks", json={"title": "t"}, headers=keyed(alice, "k"))
        age_keys(24.5)
        other = client.post("/tasks", json={"title": "another"}, headers=keyed(alice, "k"))
        assert other.status_code == 201
        assert "Idempotent-Replayed" not in other.headers
        assert task_count(client, alice) == 2
        with RESOURCES.sessions() as session:
            bodies = session.scalars(select(IdempotencyKey.body)).all()
        assert len(bodies) == 1
        assert '"another"' in bodies[0]

    def test_the_ttl_is_a_setting(
        self, client: TestClient, alice: AuthUser, settings_override: Callable[..., Settings]
    ) -> None:
        assert Settings().idempotency_ttl_hours == 24
        settings_override(idempotency_ttl_hours=1)
        client.post("/tasks", json={"title": "t"}, headers=keyed(alice, "k"))
        age_keys(1.5)
        again = client.post("/tasks", json={"title": "t"}, headers=keyed(alice, "k"))
        assert "Idempotent-Replayed" not in again.headers
        assert task_count(client, alice) == 2

    def test_expired_results_of_every_user_are_purged(
        self, client: TestClient, alice: AuthUser, bob: AuthUser
    ) -> None:
        for n in range(3):
            client.post("/tasks", json={"title": "t"}, headers=keyed(alice, f"old-{n}"))
        age_keys(48)
        client.post("/tasks", json={"title": "t"}, headers=keyed(bob, "fresh"))
        assert stored_keys() == [(bob.id, "fresh")]


# --- concurrent requests with one key ---------------------------------------------------------


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 15
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


class _Request(threading.Thread):
    """One request sent from its own thread, as a second client would."""

    def __init__(self, send: Callable[[], Response]) -> None:
        super().__init__(daemon=True)
        self.send = send
        self.response: Response | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.response = self.send()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def result(self) -> Response:
        self.join(timeout=30)
        assert self.error is None, self.error
        assert self.response is not None, "the request never finished"
        return self.response


@pytest.fixture
def committed_user(client: TestClient) -> Iterator[tuple[AuthUser, Engine]]:
    """A user whose requests commit for real on the test database (not the rolled-back test
    transaction), so that concurrent requests see each other; removed afterwards."""
    engine = RESOURCES.engine
    RESOURCES.sessions.configure(bind=engine)
    user = register_and_login(client, f"conc-{uuid.uuid4().hex[:10]}")
    try:
        yield user, engine
    finally:
        with engine.begin() as connection:
            connection.execute(delete(User).where(User.id == user.id))


@pytest.mark.postgres_redis
@pytest.mark.skipif(BACKEND == "embedded", reason="PostgreSQL's locks; the production pass runs it")
def test_two_simultaneous_requests_on_postgresql_one_2xx_and_one_409(
    client: TestClient, committed_user: tuple[AuthUser, Engine]
) -> None:
    user, engine = committed_user
    create_task(client, user)  # gives the user a change counter row to hold
    headers = keyed(user, "simultaneous")

    def send() -> Response:
        response: Response = client.post("/tasks", json={"title": "once"}, headers=headers)
        return response

    # Hold the user's change counter: the first request stops on it, inside its transaction,
    # after claiming the key, in the insert of its task (whose trigger raises the counter).
    with engine.connect() as blocker, engine.connect() as observer:
        hold = blocker.begin()
        blocker.execute(
            text("SELECT counter FROM user_change_counters WHERE user_id = :u FOR UPDATE"),
            {"u": user.id},
        )
        first = _Request(send)
        first.start()

        def first_is_waiting() -> bool:
            waiting = observer.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO tasks%'"
                )
            ).scalar_one()
            observer.rollback()
            return bool(waiting)

        _wait_for(first_is_waiting, "the first request to wait on the counter")
        started = time.monotonic()
        second = send()
        answered_in = time.monotonic() - started
        hold.rollback()
        first_response = first.result()

    body = assert_problem(second, 409, "idempotency_in_progress")
    assert int(second.headers["Retry-After"]) >= 1
    assert "conflicts" not in body
    assert answered_in < 5  # at once, not after the first request's transaction
    assert first_response.status_code == 201, first_response.text
    replay = send()
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == first_response.json()
    with engine.connect() as connection:
        titles = connection.execute(
            select(func.count())
            .select_from(Task)
            .where(Task.user_id == user.id, Task.title == "once")
        ).scalar_one()
    assert titles == 1


@pytest.fixture
def sqlite_file_database(tmp_path: Path) -> Iterator[Engine]:
    """The app on its own SQLite file (the embedded default), migrated, with real commits."""
    engine = db_config.build_engine(Settings(database_url=f"sqlite:///{tmp_path / 'app.db'}"))
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "head")
    RESOURCES.sessions.configure(bind=engine)
    try:
        yield engine
    finally:
        engine.dispose()


def test_two_simultaneous_requests_on_sqlite_do_the_work_once(
    client: TestClient, sqlite_file_database: Engine
) -> None:
    engine = sqlite_file_database
    user = register_and_login(client, "sqlite-racer")
    assert client.get("/tasks", headers=user.headers).status_code == 200  # user remembered
    headers = keyed(user, "simultaneous")
    # Writers on SQLite queue one behind the other (BEGIN IMMEDIATE): both requests start
    # together, and the second finds the first one's key.
    start = threading.Barrier(2)

    def create() -> Any:
        start.wait(15)
        return client.post("/tasks", json={"title": "once"}, headers=headers)

    requests = [_Request(create) for _ in range(2)]
    for request in requests:
        request.start()
    responses = [request.result() for request in requests]

    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 1
    done = [r for r in responses if r.status_code == 201]
    fresh = [r for r in done if "Idempotent-Replayed" not in r.headers]
    assert len(fresh) == 1, [r.text for r in responses]
    # The other one waited for the first and was answered from its result, or told to retry.
    for response in responses:
        if response is fresh[0]:
            continue
        if response.status_code == 201:
            assert response.headers["Idempotent-Replayed"] == "true"
            assert response.json() == fresh[0].json()
        else:
            assert_problem(response, 409, "idempotency_in_progress")


@pytest.mark.parametrize(
    ("key", "accepted"),
    [
        ("a" * 255, True),
        ('a"b', True),
        ('"quoted"', True),
        ('"with \\"escapes\\" \\\\ and spaces"', True),
        ('"unterminated', False),
        ('""', False),
        ('"bad\\escape"', False),
        ("a" * 256, False),
        ("has space", False),
    ],
)
def test_the_documented_key_pattern_says_what_the_server_accepts(key: str, accepted: bool) -> None:
    """Found by schema fuzzing: a key the pattern allowed (`"abc`) was refused with a 400."""
    assert bool(re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key)) is accepted
    try:
        parse_key(key)
    except InvalidIdempotencyKeyError:
        assert not accepted
    else:
        assert accepted
