"""The account: password policy, change and reset, e-mail verification, deletion."""

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, event, inspect, select, text, update

import account_mail
from config import Settings, get_settings
from db_models import AccountToken, utcnow
from services import passwords
from tests.account_helpers import (
    assert_refused_to_personal_tokens,
    bearer,
    login,
    make_personal_token,
    sent_tokens,
    verify_email,
)
from tests.conftest import PASSWORD, AuthUser, register_and_login
from tests.mail_helpers import Inbox, smtp_server, smtp_settings

NEW_PASSWORD = "a much better passphrase"


def _me(client: TestClient, token: str) -> Any:
    return client.get("/auth/me", headers=bearer(token))


def _login_status(client: TestClient, user: AuthUser, password: str) -> int:
    response = client.post("/auth/login", json={"username": user.username, "password": password})
    return int(response.status_code)


def _assert_weak(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "weak_password"
    assert [error["loc"] for error in body["errors"]] == [["body", field]]
    assert body["errors"][0]["type"] == "weak_password"


def _assert_invalid_or_expired(response: Any) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_or_expired_token"


def _verification_token(
    client: TestClient, user: AuthUser, mailbox: pytest.LogCaptureFixture
) -> str:
    """Ask to verify the user's address: the token mailed for it."""
    client.post("/auth/verify-email/request", headers=user.headers)
    (token,) = sent_tokens(mailbox, "verify_email")
    return token


def _reset_token(client: TestClient, user: AuthUser, mailbox: pytest.LogCaptureFixture) -> str:
    """Verify the user's address, then ask to reset the password: the token mailed for it."""
    verify_email(client, user, mailbox)
    client.post("/auth/password-reset/request", json={"email": user.email})
    (token,) = sent_tokens(mailbox, "reset_password")
    return token


def _expire_account_tokens(connection: Connection) -> None:
    connection.execute(update(AccountToken).values(expires_at=utcnow() - timedelta(seconds=1)))


@pytest.fixture
def mailbox(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The embedded default's mailbox: the log, where verification and reset tokens go."""
    caplog.set_level(logging.INFO, logger="account_mail")
    return caplog


# --- the password policy ------------------------------------------------------------------


class TestPasswordPolicy:
    def test_the_shipped_list_holds_the_10000_most_common_passwords_and_names_its_source(
        self,
    ) -> None:
        lines = passwords.COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").splitlines()
        header = [line for line in lines if line.startswith("#")]
        assert len(lines) - len(header) == 10_000
        assert any("SecLists" in line and "10k-most-common" in line for line in header)
        assert lines[len(header)] == "password"  # most common first
        assert len(passwords.common_passwords()) == 10_000

    @pytest.mark.parametrize(
        "password", ["password", "12345678", "qwertyuiop", "iloveyou", "Password1", "BASEBALL"]
    )
    def test_a_common_password_is_refused_at_register(
        self, client: TestClient, password: str
    ) -> None:
        response = client.post(
            "/auth/register",
            json={"username": "carol", "email": "carol@example.com", "password": password},
        )
        _assert_weak(response, "password")

    @pytest.mark.parametrize(
        ("username", "email", "password"),
        [
            ("carol.b.2024", "cb@example.com", "CAROL.B.2024"),
            ("carolb", "carol.b.2024@example.com", "Carol.B.2024@Example.COM"),
        ],
        ids=["username", "email"],
    )
    def test_the_username_or_email_as_password_is_refused(
        self, client: TestClient, username: str, email: str, password: str
    ) -> None:
        response = client.post(
            "/auth/register", json={"username": username, "email": email, "password": password}
        )
        _assert_weak(response, "password")
        assert (
            client.post(
                "/auth/login", json={"username": username, "password": password}
            ).status_code
            == 401
        )  # no account was made

    @pytest.mark.parametrize("password", ["short", "p" * 129])
    def test_length_stays_a_validation_error(self, client: TestClient, password: str) -> None:
        response = client.post(
            "/auth/register",
            json={"username": "carol", "email": "carol@example.com", "password": password},
        )
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"

    def test_an_uncommon_password_is_accepted(self, client: TestClient) -> None:
        register_and_login(client, "carol", password="violet staple gondola")


# --- POST /auth/password -------------------------------------------------------------------


class TestChangePassword:
    def _change(self, client: TestClient, token: str, current: str, new: str) -> Any:
        return client.post(
            "/auth/password",
            json={"current_password": current, "new_password": new},
            headers=bearer(token),
        )

    def test_keeps_the_caller_signs_out_the_others_and_keeps_personal_tokens(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        other = login(client, alice)
        pat = make_personal_token(client, alice, ["tasks:read"])["token"]
        response = self._change(client, alice.token, alice.password, NEW_PASSWORD)
        assert response.status_code == 204
        assert response.content == b""
        assert _me(client, alice.token).status_code == 200
        assert _me(client, other["access_token"]).status_code == 401
        refreshed = client.post("/auth/refresh", json={"refresh_token": other["refresh_token"]})
        assert refreshed.status_code == 401
        assert _me(client, pat).status_code == 200
        sessions = client.get("/auth/sessions", headers=alice.headers).json()
        assert [s["current"] for s in sessions] == [True]
        assert _login_status(client, alice, alice.password) == 401
        assert _login_status(client, alice, NEW_PASSWORD) == 200

    def test_wrong_current_password_is_400(self, client: TestClient, alice: AuthUser) -> None:
        response = self._change(client, alice.token, "not the password", NEW_PASSWORD)
        assert response.status_code == 400
        assert response.json()["code"] == "wrong_password"
        assert _login_status(client, alice, alice.password) == 200

    def test_a_weak_new_password_is_422(self, client: TestClient, alice: AuthUser) -> None:
        _assert_weak(self._change(client, alice.token, alice.password, "football"), "new_password")
        _assert_weak(
            self._change(client, alice.token, alice.password, alice.email.upper()), "new_password"
        )
        assert _login_status(client, alice, alice.password) == 200

    @pytest.mark.parametrize(
        "body",
        [
            {"current_password": PASSWORD},
            {"current_password": PASSWORD, "new_password": "short"},
            {"current_password": PASSWORD, "new_password": "n" * 129},
            {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "extra": True},
        ],
    )
    def test_invalid_body_is_422(
        self, client: TestClient, alice: AuthUser, body: dict[str, object]
    ) -> None:
        response = client.post("/auth/password", json=body, headers=alice.headers)
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"

    def test_a_personal_token_may_not_change_the_password(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        assert_refused_to_personal_tokens(
            client,
            alice,
            ["tasks:write", "files:write"],
            "POST",
            "/auth/password",
            json={"current_password": alice.password, "new_password": NEW_PASSWORD},
        )


# --- the two tokens sent by e-mail -----------------------------------------------------------


@dataclass(frozen=True)
class EmailedToken:
    """One of the tokens the service sends by e-mail, and how a test gets and uses one."""

    purpose: str
    lifetime: timedelta
    ask: Callable[[TestClient, AuthUser, pytest.LogCaptureFixture], str]  # the token mailed
    redeem: Callable[[TestClient, str], Any]  # the response to sending it back
    unchanged: Callable[[TestClient, AuthUser], bool]  # the account is as before redeeming


EMAILED_TOKENS = [
    pytest.param(
        EmailedToken(
            "verify_email",
            timedelta(hours=24),
            _verification_token,
            lambda client, token: client.post("/auth/verify-email", json={"token": token}),
            lambda client, user: _me(client, user.token).json()["email_verified"] is False,
        ),
        id="verify-email",
    ),
    pytest.param(
        EmailedToken(
            "reset_password",
            timedelta(hours=1),
            _reset_token,
            lambda client, token: client.post(
                "/auth/password-reset", json={"token": token, "new_password": NEW_PASSWORD}
            ),
            lambda client, user: _login_status(client, user, user.password) == 200,
        ),
        id="reset-password",
    ),
]


@pytest.fixture(params=EMAILED_TOKENS)
def kind(request: pytest.FixtureRequest) -> EmailedToken:
    """Each of the tokens sent by e-mail."""
    token_kind: EmailedToken = request.param
    return token_kind


@pytest.fixture
def mailed_token(
    kind: EmailedToken, client: TestClient, alice: AuthUser, mailbox: pytest.LogCaptureFixture
) -> str:
    """A token of this kind, mailed to Alice."""
    return kind.ask(client, alice, mailbox)


class TestEmailedTokens:
    def test_the_token_is_valid_its_lifetime_and_stored_only_as_a_hash(
        self, kind: EmailedToken, mailed_token: str, db_connection: Connection
    ) -> None:
        row = db_connection.execute(
            select(AccountToken).where(AccountToken.purpose == kind.purpose)
        ).one()
        assert row.token_hash == hashlib.sha256(mailed_token.encode()).hexdigest()
        assert row.expires_at - row.created_at == kind.lifetime

    def test_an_expired_token_is_400(
        self,
        client: TestClient,
        alice: AuthUser,
        kind: EmailedToken,
        mailed_token: str,
        db_connection: Connection,
    ) -> None:
        _expire_account_tokens(db_connection)
        _assert_invalid_or_expired(kind.redeem(client, mailed_token))
        assert kind.unchanged(client, alice)


# --- e-mail verification ------------------------------------------------------------------


class TestEmailVerification:
    def test_request_sends_a_single_use_token_that_verifies_the_address(
        self, client: TestClient, alice: AuthUser, mailbox: pytest.LogCaptureFixture
    ) -> None:
        assert _me(client, alice.token).json()["email_verified"] is False
        response = client.post("/auth/verify-email/request", headers=alice.headers)
        assert response.status_code == 202
        (token,) = sent_tokens(mailbox, "verify_email")
        response = client.post("/auth/verify-email", json={"token": token})
        assert response.status_code == 200
        body = response.json()
        assert body["id"] == alice.id
        assert body["email_verified"] is True
        assert _me(client, alice.token).json()["email_verified"] is True
        _assert_invalid_or_expired(client.post("/auth/verify-email", json={"token": token}))

    @pytest.mark.parametrize("token", ["", "unknown", "x" * 4096])
    def test_an_unknown_token_is_400(self, client: TestClient, token: str) -> None:
        _assert_invalid_or_expired(client.post("/auth/verify-email", json={"token": token}))

    def test_a_reset_token_does_not_verify(
        self,
        client: TestClient,
        alice: AuthUser,
        mailbox: pytest.LogCaptureFixture,
    ) -> None:
        reset = _reset_token(client, alice, mailbox)
        _assert_invalid_or_expired(client.post("/auth/verify-email", json={"token": reset}))

    @pytest.mark.parametrize("body", [{}, {"token": 5}, {"token": "x", "email": "a@b.c"}])
    def test_invalid_body_is_422(self, client: TestClient, body: dict[str, object]) -> None:
        assert client.post("/auth/verify-email", json=body).status_code == 422

    def test_a_personal_token_may_not_request_verification(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        assert_refused_to_personal_tokens(
            client, alice, ["tasks:read"], "POST", "/auth/verify-email/request"
        )


# --- password reset -------------------------------------------------------------------------


class TestPasswordReset:
    def test_a_verified_address_gets_a_token_that_resets_the_password_once(
        self, client: TestClient, alice: AuthUser, mailbox: pytest.LogCaptureFixture
    ) -> None:
        verify_email(client, alice, mailbox)
        other = login(client, alice)
        pat = make_personal_token(client, alice, ["tasks:read"])["token"]
        response = client.post("/auth/password-reset/request", json={"email": alice.email})
        assert response.status_code == 202
        (token,) = sent_tokens(mailbox, "reset_password")
        response = client.post(
            "/auth/password-reset", json={"token": token, "new_password": NEW_PASSWORD}
        )
        assert response.status_code == 204
        assert response.content == b""
        # Whoever knew the old password is out: every session and personal token.
        for old in (alice.token, other["access_token"], pat):
            assert _me(client, old).status_code == 401
        assert _login_status(client, alice, alice.password) == 401
        assert _login_status(client, alice, NEW_PASSWORD) == 200
        again = client.post(
            "/auth/password-reset", json={"token": token, "new_password": "yet another phrase"}
        )
        _assert_invalid_or_expired(again)

    def test_the_address_is_matched_in_any_case(
        self, client: TestClient, alice: AuthUser, mailbox: pytest.LogCaptureFixture
    ) -> None:
        verify_email(client, alice, mailbox)
        client.post("/auth/password-reset/request", json={"email": alice.email.upper()})
        assert len(sent_tokens(mailbox, "reset_password")) == 1

    def test_an_unverified_or_unknown_address_gets_nothing_and_the_same_answer(
        self, client: TestClient, alice: AuthUser, mailbox: pytest.LogCaptureFixture
    ) -> None:
        answers = []
        for address in (alice.email, "nobody@example.com"):
            response = client.post("/auth/password-reset/request", json={"email": address})
            answers.append(
                (response.status_code, response.headers["content-type"], response.json())
            )
        assert answers[0] == answers[1]
        assert answers[0][0] == 202
        assert sent_tokens(mailbox, "reset_password") == []
        verify_email(client, alice, mailbox)
        response = client.post("/auth/password-reset/request", json={"email": alice.email})
        assert (response.status_code, response.headers["content-type"], response.json()) == (
            answers[0]
        )
        assert len(sent_tokens(mailbox, "reset_password")) == 1

    def test_the_answer_does_no_work_that_depends_on_the_address(
        self,
        client: TestClient,
        alice: AuthUser,
        mailbox: pytest.LogCaptureFixture,
        db_connection: Connection,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # Same time for any address: the lookup itself happens after the response.
        verify_email(client, alice, mailbox)
        scheduled: list[str] = []
        monkeypatch.setattr(
            account_mail,
            "deliver_password_reset",
            lambda _resources, email: scheduled.append(email),
        )
        statements: list[str] = []
        listener = lambda *args: statements.append(str(args[2]))  # noqa: E731
        event.listen(db_connection, "before_cursor_execute", listener)
        try:
            for address in (alice.email, "nobody@example.com"):
                response = client.post("/auth/password-reset/request", json={"email": address})
                assert response.status_code == 202
        finally:
            event.remove(db_connection, "before_cursor_execute", listener)
        assert statements == []
        assert scheduled == [alice.email, "nobody@example.com"]

    def test_a_weak_password_is_422_and_leaves_the_token_usable(
        self, client: TestClient, alice: AuthUser, mailbox: pytest.LogCaptureFixture
    ) -> None:
        token = _reset_token(client, alice, mailbox)
        weak = client.post(
            "/auth/password-reset", json={"token": token, "new_password": "trustno1"}
        )
        _assert_weak(weak, "new_password")
        ok = client.post(
            "/auth/password-reset", json={"token": token, "new_password": NEW_PASSWORD}
        )
        assert ok.status_code == 204

    def test_a_verification_token_does_not_reset(
        self, client: TestClient, alice: AuthUser, mailbox: pytest.LogCaptureFixture
    ) -> None:
        token = _verification_token(client, alice, mailbox)
        response = client.post(
            "/auth/password-reset", json={"token": token, "new_password": NEW_PASSWORD}
        )
        _assert_invalid_or_expired(response)

    @pytest.mark.parametrize("token", ["", "unknown"])
    def test_an_unknown_token_is_400(self, client: TestClient, token: str) -> None:
        response = client.post(
            "/auth/password-reset", json={"token": token, "new_password": NEW_PASSWORD}
        )
        _assert_invalid_or_expired(response)

    @pytest.mark.parametrize(
        ("path", "body"),
        [
            ("/auth/password-reset/request", {}),
            ("/auth/password-reset/request", {"email": "not-an-address"}),
            ("/auth/password-reset", {"token": "t"}),
            ("/auth/password-reset", {"token": "t", "new_password": "short"}),
        ],
    )
    def test_invalid_body_is_422(self, client: TestClient, path: str, body: dict[str, Any]) -> None:
        response = client.post(path, json=body)
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"


# --- the tokens by e-mail -------------------------------------------------------------------


@pytest.fixture
def inbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Inbox]:
    """A real SMTP server on a local port, with the account mails configured to go through it."""
    handler = Inbox()
    with smtp_server(handler) as port:
        settings = smtp_settings(port)
        monkeypatch.setattr(account_mail, "get_settings", lambda: settings)
        yield handler


def _token_in(message: EmailMessage) -> str:
    body = str(message.get_content())
    return body.split('"token": "', 1)[1].split('"', 1)[0]


def test_tokens_go_by_email_when_a_mail_server_is_configured(
    client: TestClient, alice: AuthUser, inbox: Inbox, caplog: pytest.LogCaptureFixture
) -> None:
    assert client.post("/auth/verify-email/request", headers=alice.headers).status_code == 202
    (message,) = inbox.messages
    assert message["To"] == alice.email
    assert message["Subject"] == "Verify your e-mail address for Task Manager"
    token = _token_in(message)
    assert client.post("/auth/verify-email", json={"token": token}).status_code == 200
    assert token not in caplog.text  # the log carries tokens only when it is the mailbox

    client.post("/auth/password-reset/request", json={"email": alice.email})
    reset = inbox.messages[-1]
    assert reset["Subject"] == "Reset your Task Manager password"
    response = client.post(
        "/auth/password-reset", json={"token": _token_in(reset), "new_password": NEW_PASSWORD}
    )
    assert response.status_code == 204


def test_a_mail_server_that_is_down_costs_only_a_log_record(
    client: TestClient,
    alice: AuthUser,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here
    settings = Settings(smtp_host="127.0.0.1", smtp_port=port, smtp_from="tm@example.com")
    monkeypatch.setattr(account_mail, "get_settings", lambda: settings)
    assert client.post("/auth/verify-email/request", headers=alice.headers).status_code == 202
    failures = [r for r in caplog.records if getattr(r, "event", None) == "account_mail_failed"]
    assert len(failures) == 1


def test_completion_notices_start_once_the_address_is_verified(
    client: TestClient, alice: AuthUser, mailbox: pytest.LogCaptureFixture
) -> None:
    def notices() -> int:
        return sum(getattr(r, "event", None) == "task_completed" for r in mailbox.records)

    mailbox.set_level(logging.INFO, logger="background_tasks")
    first = client.post("/tasks", json={"title": "one"}, headers=alice.headers).json()
    client.patch(f"/tasks/{first['id']}", json={"completed": True}, headers=alice.headers)
    assert notices() == 0
    verify_email(client, alice, mailbox)
    second = client.post("/tasks", json={"title": "two"}, headers=alice.headers).json()
    client.patch(f"/tasks/{second['id']}", json={"completed": True}, headers=alice.headers)
    assert notices() == 1


# --- DELETE /auth/me -------------------------------------------------------------------------

_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def _rows_of(connection: Connection, user_id: int) -> dict[str, int]:
    counts = {
        "users": "SELECT count(*) FROM users WHERE id = :id",
        "tasks": "SELECT count(*) FROM tasks WHERE user_id = :id",
        "task_tags": "SELECT count(*) FROM task_tags WHERE user_id = :id",
        "task_files": "SELECT count(*) FROM task_files WHERE user_id = :id",
        "auth_sessions": "SELECT count(*) FROM auth_sessions WHERE user_id = :id",
        "refresh_tokens": "SELECT count(*) FROM refresh_tokens JOIN auth_sessions "
        "ON auth_sessions.id = refresh_tokens.session_id WHERE auth_sessions.user_id = :id",
        "personal_tokens": "SELECT count(*) FROM personal_tokens WHERE user_id = :id",
        "account_tokens": "SELECT count(*) FROM account_tokens WHERE user_id = :id",
        "user_change_counters": "SELECT count(*) FROM user_change_counters WHERE user_id = :id",
        "idempotency_keys": "SELECT count(*) FROM idempotency_keys WHERE user_id = :id",
    }
    return {
        table: int(connection.execute(text(sql), {"id": user_id}).scalar_one())
        for table, sql in counts.items()
    }


def _stored_names(connection: Connection, user_id: int) -> list[str]:
    return list(
        connection.execute(
            text("SELECT stored_filename FROM task_files WHERE user_id = :id"), {"id": user_id}
        ).scalars()
    )


class TestDeleteAccount:
    def _fill(self, client: TestClient, user: AuthUser, mailbox: pytest.LogCaptureFixture) -> None:
        for title in ("one", "two"):
            task = client.post(
                "/tasks",
                json={"title": title, "tags": ["work", "home"]},
                # A stored result of a keyed request is the user's data too.
                headers={**user.headers, "Idempotency-Key": f"fill-{title}"},
            ).json()
            upload = client.post(
                f"/tasks/{task['id']}/files",
                files={"file": ("pic.png", _PNG, "image/png")},
                headers=user.headers,
            )
            assert upload.status_code == 201, upload.text
        login(client, user)
        client.post("/auth/refresh", json={"refresh_token": login(client, user)["refresh_token"]})
        make_personal_token(client, user, ["tasks:read"])
        client.post("/auth/verify-email/request", headers=user.headers)
        client.get("/tasks/stats", headers=user.headers)

    def test_leaves_no_row_and_no_byte(
        self,
        client: TestClient,
        alice: AuthUser,
        bob: AuthUser,
        mailbox: pytest.LogCaptureFixture,
        db_connection: Connection,
    ) -> None:
        self._fill(client, alice, mailbox)
        self._fill(client, bob, mailbox)
        upload_dir = get_settings().upload_dir
        alices_files = [upload_dir / name for name in _stored_names(db_connection, alice.id)]
        bobs_files = [upload_dir / name for name in _stored_names(db_connection, bob.id)]
        assert all(path.exists() for path in alices_files + bobs_files)
        assert all(count > 0 for count in _rows_of(db_connection, alice.id).values())
        bobs_rows = _rows_of(db_connection, bob.id)

        response = client.request(
            "DELETE", "/auth/me", json={"password": alice.password}, headers=alice.headers
        )
        assert response.status_code == 204
        assert response.content == b""
        assert _rows_of(db_connection, alice.id) == dict.fromkeys(bobs_rows, 0)
        assert not any(path.exists() for path in alices_files)
        # Nobody else lost anything.
        assert _rows_of(db_connection, bob.id) == bobs_rows
        assert all(path.exists() for path in bobs_files)
        # The account is gone for every way in.
        assert _me(client, alice.token).status_code == 401
        assert _login_status(client, alice, alice.password) == 401

    def test_a_new_account_starts_empty(
        self,
        client: TestClient,
        alice: AuthUser,
        mailbox: pytest.LogCaptureFixture,
    ) -> None:
        self._fill(client, alice, mailbox)
        client.request(
            "DELETE", "/auth/me", json={"password": alice.password}, headers=alice.headers
        )
        again = register_and_login(client, "alice")
        stats = client.get("/tasks/stats", headers=again.headers).json()
        assert stats["total"] == 0
        assert client.get("/tasks", headers=again.headers).json() == []
        assert client.get("/auth/tokens", headers=again.headers).json() == []
        assert len(client.get("/auth/sessions", headers=again.headers).json()) == 1

    def test_wrong_password_is_400_and_deletes_nothing(
        self, client: TestClient, alice: AuthUser, db_connection: Connection
    ) -> None:
        client.post("/tasks", json={"title": "keep me"}, headers=alice.headers)
        response = client.request(
            "DELETE", "/auth/me", json={"password": "not the password"}, headers=alice.headers
        )
        assert response.status_code == 400
        assert response.json()["code"] == "wrong_password"
        assert _rows_of(db_connection, alice.id)["tasks"] == 1
        assert _me(client, alice.token).status_code == 200

    @pytest.mark.parametrize("body", [None, {}, {"password": 5}, {"password": "x", "force": 1}])
    def test_invalid_body_is_422(
        self, client: TestClient, alice: AuthUser, body: dict[str, object] | None
    ) -> None:
        response = client.request("DELETE", "/auth/me", json=body, headers=alice.headers)
        assert response.status_code == 422
        assert _me(client, alice.token).status_code == 200

    def test_a_personal_token_may_not_delete_the_account(
        self, client: TestClient, alice: AuthUser
    ) -> None:
        assert_refused_to_personal_tokens(
            client,
            alice,
            ["tasks:write", "files:write", "tasks:read", "files:read"],
            "DELETE",
            "/auth/me",
            json={"password": alice.password},
        )


def test_the_deletion_test_counts_every_table(db_connection: Connection) -> None:
    # A table added later that holds user data must be counted by the deletion test too.
    tables = set(inspect(db_connection).get_table_names())
    # The outbox holds jobs, not a user's data: ids and random storage keys, done or due (a
    # deleted account's bytes are removed by one of them).
    assert tables - set(_rows_of(db_connection, 0)) == {"alembic_version", "outbox"}
