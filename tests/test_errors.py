"""Every error is problem+json with a request id; a failed commit is never a 2xx."""

from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from main import create_app
from tests.conftest import RESOURCES
from tests.problem_helpers import assert_problem

from .conftest import AuthUser


def test_unknown_path_is_404_problem(client: TestClient) -> None:
    assert_problem(client.get("/no/such/path"), 404, "not_found")


def test_wrong_method_is_405_problem(client: TestClient, alice: AuthUser) -> None:
    assert_problem(client.put("/tasks/1", headers=alice.headers), 405, "method_not_allowed")


def test_validation_problem_lists_every_error(client: TestClient, alice: AuthUser) -> None:
    response = client.post(
        "/tasks", json={"title": "", "priority": "x", "extra": 1}, headers=alice.headers
    )
    body = assert_problem(response, 422, "validation_error")
    errors = body["errors"]
    assert isinstance(errors, list)
    assert {tuple(error["loc"]) for error in errors} == {
        ("body", "title"),
        ("body", "priority"),
        ("body", "extra"),
    }
    for error in errors:
        assert set(error) == {"loc", "msg", "type"}


def test_client_request_id_is_echoed(client: TestClient) -> None:
    response = client.get("/", headers={"X-Request-ID": "trace-42:a.b_c"})
    assert response.headers["X-Request-ID"] == "trace-42:a.b_c"
    problem = client.get("/nope", headers={"X-Request-ID": "trace-43"})
    assert problem.json()["request_id"] == "trace-43"


@pytest.mark.parametrize("bad_id", ["x" * 129, "has space", "semi;colon", "new\\nline"])
def test_unsafe_request_id_is_replaced(client: TestClient, bad_id: str) -> None:
    response = client.get("/", headers={"X-Request-ID": bad_id})
    generated = response.headers["X-Request-ID"]
    assert generated != bad_id
    assert 1 <= len(generated) <= 128


def test_every_response_has_a_request_id(client: TestClient, alice: AuthUser) -> None:
    for response in (
        client.get("/"),
        client.get("/auth/me", headers=alice.headers),
        client.get("/auth/me"),
        client.get("/tasks/abc", headers=alice.headers),
    ):
        assert response.headers.get("X-Request-ID")


@pytest.fixture
def crashing_app() -> FastAPI:
    app = create_app(resources=RESOURCES)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    return app


def test_unhandled_error_is_a_bare_500_problem(crashing_app: FastAPI) -> None:
    with TestClient(crashing_app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    body = assert_problem(response, 500, "internal_error")
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert str(body["request_id"]) in str(body["detail"])


def test_a_failing_commit_is_never_a_success(
    app: FastAPI,
    alice: AuthUser,
    failing_commit: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failing_commit(RuntimeError("commit refused"))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/tasks", json={"title": "lost"}, headers=alice.headers)
        assert_problem(response, 500, "internal_error")
        monkeypatch.undo()
        listing = client.get("/tasks", headers=alice.headers)
    assert listing.json() == []
