"""Registration, login and the current user (/auth/*)."""

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jose import jwt
from sqlalchemy import Connection, delete, event

import auth
from config import get_settings
from db_models import User
from services import users as user_service

from .conftest import PASSWORD, RESOURCES, AuthUser, register_and_login


def _register(client: TestClient, **fields: object) -> dict[str, object]:
    body = {"username": "carol", "email": "carol@example.com", "password": PASSWORD, **fields}
    response = client.post("/auth/register", json=body)
    return {"status": response.status_code, **response.json()}


def _login(client: TestClient, username: str, password: str) -> tuple[int, dict[str, object]]:
    # json.dumps escapes to ASCII, so even a lone surrogate travels as JSON would carry it.
    response = client.post(
        "/auth/login",
        content=json.dumps({"username": username, "password": password}),
        headers={"Content-Type": "application/json"},
    )
    return response.status_code, response.json()


# --- POST /auth/register -----------------------------------------------------------------


class TestRegister:
    def test_creates_user_without_exposing_the_password(self, client: TestClient) -> None:
        response = client.post(
            "/auth/register",
            json={"username": "Carol.B", "email": "Carol@Example.COM", "password": PASSWORD},
        )
        assert response.status_code == 201
        body = response.json()
        assert set(body) == {"id", "username", "email", "created_at"}
        assert body["username"] == "Carol.B"
        assert body["email"] == "carol@example.com"
        assert body["created_at"].endswith("Z")
        assert PASSWORD not in response.text

    @pytest.mark.parametrize("username", ["alice", "ALICE", "Alice"])
    def test_duplicate_username_in_any_case_is_409(
        self, client: TestClient, alice: AuthUser, username: str
    ) -> None:
        result = _register(client, username=username)
        assert result["status"] == 409
        assert result["code"] == "duplicate_username"

    def test_duplicate_email_in_any_case_is_409(self, client: TestClient, alice: AuthUser) -> None:
        result = _register(client, email=alice.email.upper())
        assert result["status"] == 409
        assert result["code"] == "duplicate_email"

    def test_both_duplicate_reports_the_username(self, client: TestClient, alice: AuthUser) -> None:
        result = _register(client, username="alice", email=alice.email)
        assert result["code"] == "duplicate_username"

    def test_duplicate_under_a_race_is_409_not_500(
        self, client: TestClient, alice: AuthUser, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The pre-check misses the concurrent winner; the unique index must still decide.
        real_conflict = user_service._conflict
        calls: list[object] = []

        def check_misses_first_time(session: object, data: object) -> object:
            calls.append(data)
            return None if len(calls) == 1 else real_conflict(session, data)  # type: ignore[arg-type]

        monkeypatch.setattr(user_service, "_conflict", check_misses_first_time)
        result = _register(client, username="ALICE", email="other@example.com")
        assert len(calls) == 2, "the insert should have hit the unique index"
        assert result["status"] == 409
        assert result["code"] == "duplicate_username"
        assert (
            client.post("/auth/login", json={"username": "alice", "password": PASSWORD}).status_code
            == 200
        )

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"username": "ab"}, "username"),
            ({"username": "x" * 51}, "username"),
            ({"username": "bad name"}, "username"),
            ({"username": "semi;colon"}, "username"),
            ({"username": 123}, "username"),
            ({"email": "not-an-email"}, "email"),
            ({"password": "short"}, "password"),
            ({"password": "p" * 129}, "password"),
            ({"password": "with\x00nul-byte"}, "password"),
            ({"password": 12345678}, "password"),
            ({"is_admin": True}, "is_admin"),
        ],
    )
    def test_invalid_input_is_422_naming_the_field(
        self, client: TestClient, fields: dict[str, object], field: str
    ) -> None:
        result = _register(client, **fields)
        assert result["status"] == 422
        assert result["code"] == "validation_error"
        assert any(error["loc"][-1] == field for error in result["errors"])  # type: ignore[attr-defined]

    def test_missing_body_is_422(self, client: TestClient) -> None:
        response = client.post("/auth/register")
        assert response.status_code == 422


# --- POST /auth/login --------------------------------------------------------------------


class TestLogin:
    def test_json_login_returns_a_bearer_token(self, client: TestClient, alice: AuthUser) -> None:
        status, body = _login(client, "alice", PASSWORD)
        assert status == 200
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == 3600
        claims = jwt.get_unverified_claims(str(body["access_token"]))
        assert claims["sub"] == str(alice.id)
        assert claims["exp"] - claims["iat"] == 3600

    def test_form_login_works_for_swagger_authorize(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        response = client.post(
            "/auth/login",
            data={"grant_type": "password", "username": "alice", "password": PASSWORD, "scope": ""},
        )
        assert response.status_code == 200
        token = response.json()["access_token"]
        me = client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.json()["username"] == "alice"

    def test_username_is_case_insensitive(self, client: TestClient, alice: AuthUser) -> None:
        assert _login(client, "ALICE", PASSWORD)[0] == 200

    def test_unknown_user_and_wrong_password_look_the_same(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        wrong_status, wrong = _login(client, "alice", "not the password")
        unknown_status, unknown = _login(client, "nobody", "not the password")
        assert wrong_status == unknown_status == 401
        wrong.pop("request_id")
        unknown.pop("request_id")
        assert wrong == unknown
        assert wrong["code"] == "invalid_credentials"

    def test_unknown_user_still_spends_a_hash(
        self, client: TestClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from passlib.context import CryptContext

        verified: list[str] = []
        real_verify = CryptContext.verify

        def spy(self: CryptContext, secret: str, hash: str, **kwargs: Any) -> bool:
            verified.append(hash)
            return bool(real_verify(self, secret, hash, **kwargs))

        monkeypatch.setattr(CryptContext, "verify", spy)
        assert _login(client, "nobody", "whatever-password")[0] == 401
        assert len(verified) == 1
        assert verified[0].startswith("$bcrypt-sha256$")

    @pytest.mark.parametrize(
        "password",
        ["short", "p" * 129, "with\x00nul", "p" * 1024],
        ids=["short", "long", "nul", "huge"],
    )
    def test_any_unacceptable_password_is_a_plain_401(
        self, client: TestClient, alice: AuthUser, password: str
    ) -> None:
        status, body = _login(client, "alice", password)
        assert status == 401
        assert body["code"] == "invalid_credentials"

    @pytest.mark.parametrize("username", ["ali\x00ce", "alice\U0001f600"])
    def test_unstorable_username_is_a_plain_401(
        self, client: TestClient, alice: AuthUser, username: str
    ) -> None:
        status, body = _login(client, username, PASSWORD)
        assert status == 401
        assert body["code"] == "invalid_credentials"

    def test_lone_surrogate_is_invalid_json_not_a_crash(self, client: TestClient) -> None:
        status, body = _login(client, "\ud800alice", PASSWORD)
        assert status == 422
        assert body["code"] == "validation_error"

    def test_long_passwords_are_hashed_in_full(self, client: TestClient) -> None:
        password = "x" * 100 + "tail-one"
        register_and_login(client, "longpass", password=password)
        # Same first 72 bytes (bcrypt's own limit), different end: must not log in.
        assert _login(client, "longpass", "x" * 100 + "tail-two")[0] == 401
        assert _login(client, "longpass", password)[0] == 200

    def test_128_character_password_is_accepted(self, client: TestClient) -> None:
        register_and_login(client, "maxpass", password="M" * 128)

    @pytest.mark.parametrize(
        "body",
        [
            {"username": "alice"},
            {"username": "alice", "password": 5},
            {"username": "a", "password": "b", "x": 1},
        ],
    )
    def test_malformed_json_body_is_422(self, client: TestClient, body: dict[str, object]) -> None:
        response = client.post("/auth/login", json=body)
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"

    def test_unparseable_body_is_422(self, client: TestClient) -> None:
        response = client.post(
            "/auth/login", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422

    def test_form_without_password_is_422(self, client: TestClient) -> None:
        response = client.post("/auth/login", data={"username": "alice"})
        assert response.status_code == 422


# --- GET /auth/me and bearer tokens ------------------------------------------------------


def _token(claims: dict[str, object], key: str | None = None, algorithm: str = "HS256") -> str:
    secret = key or get_settings().secret_key.get_secret_value()
    return jwt.encode(claims, secret, algorithm=algorithm)


def _unsigned_token(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


class TestCurrentUser:
    def test_me_returns_the_token_owner(self, client: TestClient, alice: AuthUser) -> None:
        response = client.get("/auth/me", headers=alice.headers)
        assert response.status_code == 200
        assert response.json()["id"] == alice.id
        assert "hashed_password" not in response.text

    @pytest.mark.parametrize(
        "authorization",
        [None, "", "Bearer", "Bearer ", "Basic YWxpY2U6cGFzc3dvcmQ=", "Token abc"],
    )
    def test_missing_token_is_401_not_authenticated(
        self, client: TestClient, authorization: str | None
    ) -> None:
        headers = {} if authorization is None else {"Authorization": authorization}
        response = client.get("/auth/me", headers=headers)
        assert response.status_code == 401
        assert response.json()["code"] == "not_authenticated"
        assert response.headers["WWW-Authenticate"] == "Bearer"

    def test_bad_tokens_are_401_invalid_token(self, client: TestClient, alice: AuthUser) -> None:
        now = datetime.now(UTC)
        valid = {"sub": str(alice.id), "iat": now, "exp": now + timedelta(minutes=5)}
        bad_tokens = {
            "expired": _token(
                {**valid, "iat": now - timedelta(hours=2), "exp": now - timedelta(hours=1)}
            ),
            "alg_none": _unsigned_token(
                {
                    "sub": str(alice.id),
                    "iat": int(now.timestamp()),
                    "exp": int(now.timestamp()) + 300,
                }
            ),
            "wrong_key": _token(valid, key="another-key-that-is-long-enough-0123456789"),
            "hs512": _token(valid, algorithm="HS512"),
            "garbage": "not.a.jwt",
            "no_exp": _token({"sub": str(alice.id), "iat": now}),
            "no_sub": _token({"iat": now, "exp": now + timedelta(minutes=5)}),
            "bad_sub": _token({**valid, "sub": "alice"}),
            "deleted_user": _token({**valid, "sub": "999999"}),
        }
        for name, token in bad_tokens.items():
            response = client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, name
            assert response.json()["code"] == "invalid_token", name
            assert response.headers["WWW-Authenticate"] == "Bearer", name


def test_a_token_verified_before_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = get_settings()
    token, lifetime = auth.create_access_token(7, settings, created_at=datetime.now(UTC))
    assert auth.decode_access_token(token, settings) == 7  # verified, and remembered
    later = datetime.now(UTC) + timedelta(seconds=lifetime + 1)

    class Later(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> "Later":
            return cls.fromtimestamp(later.timestamp(), tz)

    monkeypatch.setattr(auth, "datetime", Later)
    with pytest.raises(auth.InvalidTokenError):
        auth.decode_access_token(token, settings)


class TestRecentUsers:
    """Each worker remembers authenticated users briefly, so most requests skip the lookup."""

    @pytest.fixture
    def clock(self, monkeypatch: pytest.MonkeyPatch) -> list[float]:
        now = [1000.0]
        remembered = user_service.RecentUsers(10, clock=lambda: now[0])
        monkeypatch.setattr(RESOURCES, "recent_users", remembered)
        return now

    def _delete(self, connection: Connection, user: AuthUser) -> None:
        connection.execute(delete(User).where(User.id == user.id))

    def test_a_remembered_user_needs_no_query(
        self, client: TestClient, alice: AuthUser, clock: list[float], db_connection: Connection
    ) -> None:
        assert client.get("/auth/me", headers=alice.headers).status_code == 200
        statements: list[str] = []
        listener = lambda *args: statements.append(str(args[2]))  # noqa: E731
        event.listen(db_connection, "before_cursor_execute", listener)
        try:
            assert client.get("/auth/me", headers=alice.headers).json()["id"] == alice.id
        finally:
            event.remove(db_connection, "before_cursor_execute", listener)
        assert not [sql for sql in statements if "FROM users" in sql]

    def test_a_deleted_user_is_refused_once_forgotten(
        self, client: TestClient, alice: AuthUser, clock: list[float], db_connection: Connection
    ) -> None:
        assert client.get("/auth/me", headers=alice.headers).status_code == 200
        self._delete(db_connection, alice)
        clock[0] += 10.5
        response = client.get("/auth/me", headers=alice.headers)
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_token"

    def test_a_deleted_user_never_seen_is_refused_at_once(
        self, client: TestClient, alice: AuthUser, clock: list[float], db_connection: Connection
    ) -> None:
        self._delete(db_connection, alice)
        assert client.get("/auth/me", headers=alice.headers).status_code == 401

    def test_zero_seconds_remembers_nothing(
        self,
        client: TestClient,
        alice: AuthUser,
        monkeypatch: pytest.MonkeyPatch,
        db_connection: Connection,
    ) -> None:
        monkeypatch.setattr(RESOURCES, "recent_users", user_service.RecentUsers(0))
        assert client.get("/auth/me", headers=alice.headers).status_code == 200
        self._delete(db_connection, alice)
        assert client.get("/auth/me", headers=alice.headers).status_code == 401
