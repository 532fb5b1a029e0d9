"""Sessions: login, refresh-token rotation and reuse detection, the session list, logout."""

import copy
import hashlib
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jose import jwt
from sqlalchemy import Connection, func, select, update

from db_models import AuthSession, RefreshToken, utcnow
from main import create_app
from services.users import RecentUsers
from tests.account_helpers import assert_refused_to_personal_tokens, bearer, login
from tests.conftest import RESOURCES, AuthUser


def _refresh(client: TestClient, refresh_token: object) -> Any:
    return client.post("/auth/refresh", json={"refresh_token": refresh_token})


def _me(client: TestClient, access_token: str) -> Any:
    return client.get("/auth/me", headers=bearer(access_token))


def _assert_invalid_token(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "invalid_token"
    assert response.headers["WWW-Authenticate"] == "Bearer"


def _session_id(access_token: str) -> int:
    return int(jwt.get_unverified_claims(access_token)["sid"])


# --- POST /auth/login --------------------------------------------------------------------


class TestLogin:
    def test_every_login_starts_a_session_with_a_token_pair(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        first, second = login(client, alice), login(client, alice)
        assert first["token_type"] == "bearer"
        assert first["expires_in"] == 15 * 60
        assert first["refresh_expires_in"] == 30 * 24 * 3600
        assert _session_id(first["access_token"]) != _session_id(second["access_token"])
        assert first["refresh_token"] != second["refresh_token"]
        assert _me(client, first["access_token"]).status_code == 200

    def test_the_refresh_token_is_opaque_random_and_stored_only_as_a_hash(
        self, client: TestClient, alice: AuthUser, db_connection: Connection
    ) -> None:
        token = login(client, alice)["refresh_token"]
        secret = token.removeprefix("tmrt_")
        assert token.startswith("tmrt_")
        assert "." not in token  # not a JWT: nothing in it to read
        assert len(secret) >= 43  # 32 random bytes, URL-safe base64: at least 256 bits
        stored = db_connection.execute(select(RefreshToken.token_hash)).scalars().all()
        assert hashlib.sha256(token.encode()).hexdigest() in stored
        assert not any(secret in value for value in stored)


# --- POST /auth/refresh ------------------------------------------------------------------


class TestRefresh:
    def test_refresh_gives_a_new_pair_for_the_same_session(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        tokens = login(client, alice)
        response = _refresh(client, tokens["refresh_token"])
        assert response.status_code == 200
        renewed = response.json()
        assert set(renewed) == {
            "access_token",
            "token_type",
            "expires_in",
            "refresh_token",
            "refresh_expires_in",
        }
        assert renewed["refresh_token"] != tokens["refresh_token"]
        assert _session_id(renewed["access_token"]) == _session_id(tokens["access_token"])
        assert _me(client, renewed["access_token"]).json()["id"] == alice.id

    def test_needs_no_bearer_token(self, client: TestClient, alice: AuthUser) -> None:
        tokens = login(client, alice)
        response = client.post(
            "/auth/refresh",
            json={"refresh_token": tokens["refresh_token"]},
            headers={"Authorization": "Bearer not-a-token"},
        )
        assert response.status_code == 200

    def test_rotation_chains(self, client: TestClient, alice: AuthUser) -> None:
        refresh_token = login(client, alice)["refresh_token"]
        for _ in range(3):
            response = _refresh(client, refresh_token)
            assert response.status_code == 200
            refresh_token = response.json()["refresh_token"]

    def test_reuse_revokes_the_whole_session(self, client: TestClient, alice: AuthUser) -> None:
        tokens = login(client, alice)
        other_session = login(client, alice)
        renewed = _refresh(client, tokens["refresh_token"]).json()
        # The spent token again: someone holds a copy. The session ends, for both holders.
        response = _refresh(client, tokens["refresh_token"])
        assert response.status_code == 401
        assert response.json()["code"] == "refresh_token_reused"
        assert response.headers["WWW-Authenticate"] == "Bearer"
        # Every token of that session is refused: the newer refresh token, both access tokens.
        _assert_invalid_token(_refresh(client, renewed["refresh_token"]))
        _assert_invalid_token(_me(client, renewed["access_token"]))
        _assert_invalid_token(_me(client, tokens["access_token"]))
        # Other sessions are not the leaked one.
        assert _me(client, other_session["access_token"]).status_code == 200
        assert _refresh(client, other_session["refresh_token"]).status_code == 200

    def test_reuse_after_the_thief_refreshed_first_also_revokes(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        tokens = login(client, alice)
        stolen = _refresh(client, tokens["refresh_token"]).json()  # the thief was first
        assert _refresh(client, tokens["refresh_token"]).json()["code"] == "refresh_token_reused"
        _assert_invalid_token(_me(client, stolen["access_token"]))
        _assert_invalid_token(_refresh(client, stolen["refresh_token"]))

    def test_the_revoked_session_leaves_the_list(self, client: TestClient, alice: AuthUser) -> None:
        tokens = login(client, alice)
        _refresh(client, tokens["refresh_token"])
        _refresh(client, tokens["refresh_token"])
        ids = [s["id"] for s in client.get("/auth/sessions", headers=alice.headers).json()]
        assert _session_id(tokens["access_token"]) not in ids

    @pytest.mark.parametrize(
        "token",
        ["", "tmrt_unknown", "x" * 4096, "eyJhbGciOiJIUzI1NiJ9.e30.c2ln"],
        ids=["empty", "unknown", "long", "an-access-token-shape"],
    )
    def test_unknown_token_is_401_invalid_token(self, client: TestClient, token: str) -> None:
        _assert_invalid_token(_refresh(client, token))

    def test_an_access_token_is_not_a_refresh_token(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        _assert_invalid_token(_refresh(client, alice.token))

    def test_expired_token_is_401_invalid_token(
        self, client: TestClient, alice: AuthUser, db_connection: Connection
    ) -> None:
        tokens = login(client, alice)
        digest = hashlib.sha256(tokens["refresh_token"].encode()).hexdigest()
        db_connection.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == digest)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        _assert_invalid_token(_refresh(client, tokens["refresh_token"]))

    def test_a_revoked_sessions_token_is_401_invalid_token(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        tokens = login(client, alice)
        assert (
            client.post("/auth/logout", headers=bearer(tokens["access_token"])).status_code == 204
        )
        _assert_invalid_token(_refresh(client, tokens["refresh_token"]))

    @pytest.mark.parametrize(
        "body",
        [{}, {"refresh_token": 5}, {"refresh_token": None}, {"refresh_token": "x", "extra": 1}],
    )
    def test_malformed_body_is_422(self, client: TestClient, body: dict[str, object]) -> None:
        response = client.post("/auth/refresh", json=body)
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"


# --- GET /auth/sessions --------------------------------------------------------------------


class TestListSessions:
    def test_lists_live_sessions_and_marks_the_current_one(
        self, client: TestClient, alice: AuthUser, bob: AuthUser
    ) -> None:
        phone = login(client, alice, **{"User-Agent": "phone-app/2.1"})
        response = client.get("/auth/sessions", headers=bearer(phone["access_token"]))
        assert response.status_code == 200
        sessions = response.json()
        assert [s["id"] for s in sessions] == sorted(s["id"] for s in sessions)
        assert len(sessions) == 2  # the fixture's login and this one; bob's are not here
        (current,) = [s for s in sessions if s["current"]]
        assert current["id"] == _session_id(phone["access_token"])
        assert current["user_agent"] == "phone-app/2.1"
        assert set(current) == {"id", "created_at", "last_used_at", "user_agent", "current"}
        assert current["created_at"].endswith("Z")

    def test_last_used_moves_with_each_refresh(
        self, client: TestClient, alice: AuthUser, db_connection: Connection
    ) -> None:
        tokens = login(client, alice)
        session_id = _session_id(tokens["access_token"])
        long_ago = utcnow() - timedelta(days=3)
        db_connection.execute(
            update(AuthSession).where(AuthSession.id == session_id).values(last_used_at=long_ago)
        )
        renewed = _refresh(client, tokens["refresh_token"]).json()
        (listed,) = [
            s
            for s in client.get("/auth/sessions", headers=bearer(renewed["access_token"])).json()
            if s["id"] == session_id
        ]
        assert listed["last_used_at"] > long_ago.isoformat().replace("+00:00", "Z")

    def test_a_personal_token_may_not_list_sessions(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        assert_refused_to_personal_tokens(client, alice, ["tasks:read"], "GET", "/auth/sessions")


# --- DELETE /auth/sessions/{id} ------------------------------------------------------------


class TestRevokeSession:
    def test_ends_the_session_and_its_tokens(self, client: TestClient, alice: AuthUser) -> None:
        laptop = login(client, alice)
        session_id = _session_id(laptop["access_token"])
        response = client.delete(f"/auth/sessions/{session_id}", headers=alice.headers)
        assert response.status_code == 204
        assert response.content == b""
        _assert_invalid_token(_me(client, laptop["access_token"]))
        _assert_invalid_token(_refresh(client, laptop["refresh_token"]))
        listed = client.get("/auth/sessions", headers=alice.headers).json()
        assert session_id not in [s["id"] for s in listed]
        assert _me(client, alice.token).status_code == 200

    def test_another_users_session_is_404(
        self, client: TestClient, alice: AuthUser, bob: AuthUser
    ) -> None:
        bobs = _session_id(bob.token)
        response = client.delete(f"/auth/sessions/{bobs}", headers=alice.headers)
        assert response.status_code == 404
        assert response.json()["code"] == "session_not_found"
        assert _me(client, bob.token).status_code == 200

    def test_a_missing_session_is_404(self, client: TestClient, alice: AuthUser) -> None:
        response = client.delete("/auth/sessions/999999", headers=alice.headers)
        assert response.status_code == 404
        assert response.json()["code"] == "session_not_found"

    @pytest.mark.parametrize("session_id", ["0", "abc", str(2**31)])
    def test_bad_id_is_422(self, client: TestClient, alice: AuthUser, session_id: str) -> None:
        response = client.delete(f"/auth/sessions/{session_id}", headers=alice.headers)
        assert response.status_code == 422


# --- POST /auth/logout ---------------------------------------------------------------------


class TestLogout:
    def test_ends_only_the_current_session(self, client: TestClient, alice: AuthUser) -> None:
        other = login(client, alice)
        response = client.post("/auth/logout", headers=alice.headers)
        assert response.status_code == 204
        assert response.content == b""
        _assert_invalid_token(_me(client, alice.token))
        assert _me(client, other["access_token"]).status_code == 200

    def test_logging_out_twice_is_401(self, client: TestClient, alice: AuthUser) -> None:
        assert client.post("/auth/logout", headers=alice.headers).status_code == 204
        _assert_invalid_token(client.post("/auth/logout", headers=alice.headers))


# --- revocation reaches every worker ------------------------------------------------------


@pytest.fixture
def second_worker() -> Iterator[tuple[TestClient, list[float]]]:
    """Another app instance on the same database and Redis, as a second worker process is;
    its memory of recent tokens runs on a clock the test moves."""
    now = [1000.0]
    # The suite's database and Redis (so the test's rows are seen), its own token memory.
    resources = copy.copy(RESOURCES)
    resources.recent_users = RecentUsers(
        RESOURCES.settings.user_cache_seconds, clock=lambda: now[0]
    )
    app: FastAPI = create_app(resources=resources)
    with TestClient(app) as client:
        yield client, now


def _seen_by(worker: TestClient, access_token: str) -> None:
    assert _me(worker, access_token).status_code == 200  # and now remembered there


class TestRevocationOnEveryWorker:
    """A revocation is seen at once by the worker that made it, by others within
    USER_CACHE_SECONDS: their memory of the token expires and the next lookup finds nothing."""

    @pytest.mark.parametrize("how", ["logout", "delete", "reuse"])
    def test_a_revoked_session_is_refused_by_another_worker(
        self,
        client: TestClient,
        alice: AuthUser,
        second_worker: tuple[TestClient, list[float]],
        how: str,
    ) -> None:
        worker, clock = second_worker
        tokens = login(client, alice)
        _seen_by(worker, tokens["access_token"])
        if how == "logout":
            client.post("/auth/logout", headers=bearer(tokens["access_token"]))
        elif how == "delete":
            session_id = _session_id(tokens["access_token"])
            client.delete(f"/auth/sessions/{session_id}", headers=alice.headers)
        else:
            _refresh(client, tokens["refresh_token"])
            _refresh(client, tokens["refresh_token"])
        _assert_invalid_token(_me(client, tokens["access_token"]))  # this worker: at once
        clock[0] += worker.app.state.settings.user_cache_seconds + 0.1  # type: ignore[attr-defined]
        _assert_invalid_token(_me(worker, tokens["access_token"]))

    def test_a_password_change_signs_out_the_other_sessions_on_another_worker(
        self,
        client: TestClient,
        alice: AuthUser,
        second_worker: tuple[TestClient, list[float]],
    ) -> None:
        worker, clock = second_worker
        other = login(client, alice)
        _seen_by(worker, other["access_token"])
        _seen_by(worker, alice.token)
        response = client.post(
            "/auth/password",
            json={"current_password": alice.password, "new_password": "a much better passphrase"},
            headers=alice.headers,
        )
        assert response.status_code == 204
        clock[0] += worker.app.state.settings.user_cache_seconds + 0.1  # type: ignore[attr-defined]
        _assert_invalid_token(_me(worker, other["access_token"]))
        assert _me(worker, alice.token).status_code == 200  # the caller stays signed in


# --- housekeeping ------------------------------------------------------------------------


def test_spent_refresh_tokens_are_kept_only_until_they_expire(
    client: TestClient, alice: AuthUser, db_connection: Connection
) -> None:
    tokens = login(client, alice)
    session_id = _session_id(tokens["access_token"])

    def stored() -> int:
        count = db_connection.scalar(
            select(func.count()).where(RefreshToken.session_id == session_id)
        )
        return int(count or 0)

    refresh_token = tokens["refresh_token"]
    for _ in range(3):
        refresh_token = _refresh(client, refresh_token).json()["refresh_token"]
    assert stored() == 4  # three spent (kept to detect reuse) and the live one
    db_connection.execute(
        update(RefreshToken)
        .where(RefreshToken.session_id == session_id, RefreshToken.used_at.is_not(None))
        .values(expires_at=utcnow() - timedelta(seconds=1))
    )
    _refresh(client, refresh_token)
    assert stored() == 2  # the one just spent and the new one


def test_a_session_that_can_no_longer_be_renewed_is_gone(
    client: TestClient,
    alice: AuthUser,
    db_connection: Connection,
    swap_recent_users: Callable[[object], None],
) -> None:
    swap_recent_users(RecentUsers(0))
    tokens = login(client, alice)
    session_id = _session_id(tokens["access_token"])
    db_connection.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id)
        .values(expires_at=utcnow() - timedelta(seconds=1))
    )
    _assert_invalid_token(_me(client, tokens["access_token"]))
    ids = [s["id"] for s in client.get("/auth/sessions", headers=alice.headers).json()]
    assert session_id not in ids
    login(client, alice)  # a login clears it away
    assert db_connection.scalar(select(AuthSession.id).where(AuthSession.id == session_id)) is None
