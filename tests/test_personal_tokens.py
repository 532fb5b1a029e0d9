"""Personal access tokens: create (shown once), list, delete, use within their scopes."""

import hashlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Connection, event, select, update

from config import Settings
from db_models import PersonalToken, utcnow
from main import create_app
from rate_limit_config import RateLimiter
from services.users import Principal, RecentUsers
from tests.account_helpers import bearer, make_personal_token
from tests.conftest import RESOURCES, AuthUser


def _parse(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


def _create(client: TestClient, user: AuthUser, body: dict[str, Any]) -> Any:
    return client.post("/auth/tokens", json=body, headers=user.headers)


# --- POST /auth/tokens ---------------------------------------------------------------------


class TestCreate:
    def test_the_secret_is_shown_once_and_stored_only_as_a_hash(
        self, client: TestClient, alice: AuthUser, db_connection: Connection
    ) -> None:
        response = _create(
            client, alice, {"name": " backup ", "scopes": ["tasks:read"], "expires_in_days": 90}
        )
        assert response.status_code == 201
        body = response.json()
        assert set(body) == {
            "id",
            "name",
            "scopes",
            "created_at",
            "expires_at",
            "last_used_at",
            "token",
        }
        assert body["name"] == "backup"
        assert body["scopes"] == ["tasks:read"]
        assert body["last_used_at"] is None
        assert body["token"].startswith("tmpat_")
        assert len(body["token"].removeprefix("tmpat_")) >= 43  # 256 random bits
        assert _parse(body["expires_at"]) - _parse(body["created_at"]) == timedelta(days=90)
        stored = db_connection.execute(select(PersonalToken.token_hash)).scalars().all()
        assert stored == [hashlib.sha256(body["token"].encode()).hexdigest()]
        listed = client.get("/auth/tokens", headers=alice.headers).json()
        assert "token" not in listed[0]
        assert body["token"] not in str(listed)

    def test_scopes_are_kept_once_each_in_a_fixed_order(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        scopes = ["files:write", "tasks:read", "files:write"]
        body = make_personal_token(client, alice, scopes)
        assert body["scopes"] == ["tasks:read", "files:write"]

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"expires_in_days": 0}, "expires_in_days"),
            ({"expires_in_days": 366}, "expires_in_days"),
            ({"expires_in_days": "30"}, "expires_in_days"),
            ({"expires_in_days": 1.5}, "expires_in_days"),
            ({"expires_in_days": None}, "expires_in_days"),
            ({"scopes": []}, "scopes"),
            ({"scopes": ["admin"]}, "scopes"),
            ({"scopes": ["account"]}, "scopes"),
            ({"scopes": "tasks:read"}, "scopes"),
            ({"name": "   "}, "name"),
            ({"name": "n" * 101}, "name"),
            ({"name": "nul\x00"}, "name"),
            ({"user_id": 1}, "user_id"),
        ],
    )
    def test_invalid_input_is_422_naming_the_field(
        self, client: TestClient, alice: AuthUser, changes: dict[str, Any], field: str
    ) -> None:
        body = {"name": "script", "scopes": ["tasks:read"], "expires_in_days": 30, **changes}
        response = _create(client, alice, body)
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"
        assert any(error["loc"][1] == field for error in response.json()["errors"])

    @pytest.mark.parametrize("missing", ["name", "scopes", "expires_in_days"])
    def test_every_field_is_required_the_expiry_too(
        self, client: TestClient, alice: AuthUser, missing: str
    ) -> None:
        body = {"name": "script", "scopes": ["tasks:read"], "expires_in_days": 30}
        del body[missing]
        assert _create(client, alice, body).status_code == 422

    @pytest.mark.parametrize("days", [1, 365])
    def test_expiry_bounds_are_inclusive(
        self, client: TestClient, alice: AuthUser, days: int
    ) -> None:
        make_personal_token(client, alice, ["tasks:read"], days=days)


# --- GET /auth/tokens ----------------------------------------------------------------------


class TestList:
    def test_lists_only_your_tokens_oldest_first(
        self, client: TestClient, alice: AuthUser, bob: AuthUser
    ) -> None:
        first = make_personal_token(client, alice, ["tasks:read"], name="first")
        second = make_personal_token(client, alice, ["files:read"], name="second")
        make_personal_token(client, bob, ["tasks:read"], name="bob's")
        response = client.get("/auth/tokens", headers=alice.headers)
        assert response.status_code == 200
        listed = response.json()
        assert [t["id"] for t in listed] == [first["id"], second["id"]]
        assert listed[0] == {key: value for key, value in first.items() if key != "token"}


# --- DELETE /auth/tokens/{id} --------------------------------------------------------------


class TestDelete:
    def test_a_deleted_token_stops_working(self, client: TestClient, alice: AuthUser) -> None:
        created = make_personal_token(client, alice, ["tasks:read"])
        assert client.get("/tasks", headers=bearer(created["token"])).status_code == 200
        response = client.delete(f"/auth/tokens/{created['id']}", headers=alice.headers)
        assert response.status_code == 204
        assert response.content == b""
        refused = client.get("/tasks", headers=bearer(created["token"]))
        assert refused.status_code == 401
        assert refused.json()["code"] == "invalid_token"
        assert client.get("/auth/tokens", headers=alice.headers).json() == []

    def test_another_users_token_is_404(
        self, client: TestClient, alice: AuthUser, bob: AuthUser
    ) -> None:
        bobs = make_personal_token(client, bob, ["tasks:read"])
        response = client.delete(f"/auth/tokens/{bobs['id']}", headers=alice.headers)
        assert response.status_code == 404
        assert response.json()["code"] == "token_not_found"
        assert client.get("/tasks", headers=bearer(bobs["token"])).status_code == 200

    def test_a_missing_token_is_404(self, client: TestClient, alice: AuthUser) -> None:
        response = client.delete("/auth/tokens/999999", headers=alice.headers)
        assert response.status_code == 404

    @pytest.mark.parametrize("token_id", ["0", "x", str(2**31)])
    def test_bad_id_is_422(self, client: TestClient, alice: AuthUser, token_id: str) -> None:
        assert client.delete(f"/auth/tokens/{token_id}", headers=alice.headers).status_code == 422


# --- using a token ------------------------------------------------------------------------


class TestUse:
    def test_acts_as_its_user_within_its_scopes(
        self, client: TestClient, alice: AuthUser, bob: AuthUser
    ) -> None:
        bobs_task = client.post("/tasks", json={"title": "bob's"}, headers=bob.headers).json()
        writer = bearer(make_personal_token(client, alice, ["tasks:write"])["token"])
        created = client.post("/tasks", json={"title": "via token"}, headers=writer)
        assert created.status_code == 201
        assert created.json()["user_id"] == alice.id
        # tasks:write includes tasks:read; files are another scope.
        assert client.get(f"/tasks/{created.json()['id']}", headers=writer).status_code == 200
        assert client.get(f"/tasks/{bobs_task['id']}", headers=writer).status_code == 404
        files = client.get(f"/tasks/{created.json()['id']}/files", headers=writer)
        assert files.status_code == 403
        assert files.json()["code"] == "insufficient_scope"
        assert "files:read" in files.headers["WWW-Authenticate"]
        me = client.get("/auth/me", headers=writer)
        assert me.status_code == 200
        assert me.json()["id"] == alice.id

    def test_last_used_is_recorded(self, client: TestClient, alice: AuthUser) -> None:
        created = make_personal_token(client, alice, ["tasks:read"])
        assert client.get("/auth/tokens", headers=alice.headers).json()[0]["last_used_at"] is None
        before = datetime.now(UTC) - timedelta(seconds=1)
        assert client.get("/tasks", headers=bearer(created["token"])).status_code == 200
        (listed,) = client.get("/auth/tokens", headers=alice.headers).json()
        assert _parse(listed["last_used_at"]) >= before

    def test_a_refused_request_still_counts_as_use(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        created = make_personal_token(client, alice, ["tasks:read"])
        assert client.get("/tasks/999999", headers=bearer(created["token"])).status_code == 404
        assert client.get("/auth/tokens", headers=alice.headers).json()[0]["last_used_at"]

    def test_an_expired_token_is_401(
        self, client: TestClient, alice: AuthUser, db_connection: Connection
    ) -> None:
        created = make_personal_token(client, alice, ["tasks:read"])
        db_connection.execute(
            update(PersonalToken).values(expires_at=utcnow() - timedelta(seconds=1))
        )
        response = client.get("/tasks", headers=bearer(created["token"]))
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_token"
        assert response.headers["WWW-Authenticate"] == "Bearer"

    @pytest.mark.parametrize("token", ["tmpat_", "tmpat_unknown", "tmpat_" + "A" * 43])
    def test_an_unknown_token_is_401(self, client: TestClient, token: str) -> None:
        response = client.get("/tasks", headers=bearer(token))
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_token"

    def test_a_remembered_token_still_stops_at_its_expiry(self) -> None:
        recent = RecentUsers(60)
        principal = Principal(
            user_id=1,
            username="alice",
            email="alice@example.com",
            email_verified=False,
            created_at=datetime.now(UTC),
            token_id=1,
            scopes=frozenset({"tasks:read"}),
            expires_at=time.time() - 1,
        )
        recent.remember(("token", "digest"), principal)
        assert recent.get(("token", "digest")) is None


# --- rate limits key on the token's user ----------------------------------------------------


@pytest.fixture
def limited_app() -> FastAPI:
    """Limits on; a fresh counter prefix, so no run shares a budget (Redis keys expire)."""
    settings = Settings(rate_limit_enabled=True, rate_limit_default="3/minute")
    app = create_app(settings, resources=RESOURCES)
    app.state.limiter = RateLimiter(settings, key_prefix=f"test-pat-{time.time_ns()}")
    return app


def test_a_personal_token_draws_from_its_users_budget(
    client: TestClient, alice: AuthUser, bob: AuthUser, limited_app: FastAPI
) -> None:
    pat = make_personal_token(client, alice, ["tasks:read"])["token"]
    limited = TestClient(limited_app)
    statuses = [
        limited.get("/tasks", headers=headers).status_code
        for headers in (bearer(pat), alice.headers, bearer(pat))
    ]
    assert statuses == [200, 200, 200]
    # The same user's budget, whichever token: a fourth request is one too many.
    for headers in (bearer(pat), alice.headers):
        response = limited.get("/tasks", headers=headers)
        assert response.status_code == 429
        assert response.json()["code"] == "rate_limited"
    # Another user, from the same address, has a budget of their own.
    assert limited.get("/tasks", headers=bob.headers).status_code == 200


def test_a_remembered_token_costs_no_query(
    client: TestClient, alice: AuthUser, db_connection: Connection
) -> None:
    token = make_personal_token(client, alice, ["tasks:read"])["token"]
    statements: list[str] = []
    listener = lambda *args: statements.append(str(args[2]))  # noqa: E731
    for headers in (bearer(token), alice.headers):
        assert client.get("/auth/me", headers=headers).status_code == 200  # looked up once
        event.listen(db_connection, "before_cursor_execute", listener)
        try:
            assert client.get("/auth/me", headers=headers).json()["id"] == alice.id
        finally:
            event.remove(db_connection, "before_cursor_execute", listener)
    assert statements == []
