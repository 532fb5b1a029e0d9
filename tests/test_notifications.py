"""Completion notices: sent after the response, by log or by email, and never break a request."""

import email
import email.policy
import logging
import smtplib
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SmtpSession
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import Connection, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

import background_tasks
from config import Settings
from db_models import User
from tests.conftest import AuthUser, register_and_login

SENDER = "Task Manager <noreply@taskmanager.invalid>"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Inbox:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, _server: SMTP, _session: SmtpSession, envelope: Envelope) -> str:
        content = envelope.content
        assert isinstance(content, bytes)
        self.messages.append(email.message_from_bytes(content, policy=email.policy.default))
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


class RefusingServer:
    """An aiosmtpd handler that refuses every message, as a broken relay does."""

    def __init__(self) -> None:
        self.attempts = 0

    async def handle_DATA(self, _server: SMTP, _session: SmtpSession, _envelope: Envelope) -> str:
        self.attempts += 1
        return "554 5.3.0 Transaction failed"


def smtp_settings(port: int, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_from": SENDER,
        "smtp_starttls": False,
        "smtp_timeout_seconds": 5,
        **changes,
    }
    return Settings(**values)


@pytest.fixture
def use_settings(monkeypatch: pytest.MonkeyPatch) -> Callable[[Settings], None]:
    """Make background work read these settings, as a process started with them would."""

    def apply(settings: Settings) -> None:
        monkeypatch.setattr(background_tasks, "get_settings", lambda: settings)

    return apply


@pytest.fixture
def inbox(use_settings: Callable[[Settings], None]) -> Iterator[Inbox]:
    """A real SMTP server on a local port, with the app configured to send through it."""
    handler = Inbox()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    use_settings(smtp_settings(port))
    try:
        yield handler
    finally:
        controller.stop()


def verified(user: AuthUser, connection: Connection) -> AuthUser:
    """Notices go to verified addresses only; these tests are about ones that were verified."""
    connection.execute(update(User).where(User.id == user.id).values(email_verified=True))
    return user


@pytest.fixture
def alice(client: TestClient, db_connection: Connection) -> AuthUser:
    return verified(register_and_login(client, "alice"), db_connection)


@pytest.fixture
def bob(client: TestClient, db_connection: Connection) -> AuthUser:
    return verified(register_and_login(client, "bob"), db_connection)


def make_task(client: TestClient, user: AuthUser, **fields: Any) -> dict[str, Any]:
    response = client.post("/tasks", json={"title": "Write report", **fields}, headers=user.headers)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


def complete(client: TestClient, user: AuthUser, task_id: int, **extra: Any) -> Any:
    return client.patch(
        f"/tasks/{task_id}", json={"completed": True, **extra}, headers=user.headers
    )


def notices_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "task_completed"]


def failures_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "notification_failed"]


# --- choosing the notifier ----------------------------------------------------------------


class TestConfiguration:
    def test_log_is_the_default(self) -> None:
        assert isinstance(background_tasks.build_notifier(Settings()), background_tasks.LogNotifier)

    def test_smtp_when_a_mail_server_is_configured(self) -> None:
        notifier = background_tasks.build_notifier(smtp_settings(2525))
        assert isinstance(notifier, background_tasks.SmtpNotifier)
        assert (notifier.host, notifier.port, notifier.sender) == ("127.0.0.1", 2525, SENDER)

    def test_notifier_log_wins_over_a_configured_server(self) -> None:
        settings = smtp_settings(2525, notifier="log")
        assert isinstance(background_tasks.build_notifier(settings), background_tasks.LogNotifier)

    def test_notifier_smtp_without_a_server_is_a_configuration_error(self) -> None:
        with pytest.raises(ValidationError, match="SMTP_HOST"):
            Settings(notifier="smtp", smtp_host="", smtp_from="")

    def test_the_subject_is_one_line_however_the_title_is_written(self) -> None:
        notifier = background_tasks.SmtpNotifier(host="localhost", port=25, sender=SENDER)
        notice = background_tasks.CompletionNotice(
            task_id=7,
            title="Line one\r\nBcc: victim@example.com\nline three" + " long" * 50,
            user_id=1,
            username="alice",
            email="alice@example.com",
            completed_at=datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
        )
        message = notifier.message(notice)
        assert "\n" not in message["Subject"]
        assert message["Subject"].startswith("Task completed: Line one Bcc: victim@example.com")
        assert len(message["Subject"]) <= len("Task completed: ") + 100
        assert message["Bcc"] is None
        assert message["To"] == "alice@example.com"


# --- PATCH /tasks/{id} with the log notifier ----------------------------------------------


class TestLogNotifier:
    def test_completing_a_task_logs_one_notice(
        self, client: TestClient, alice: AuthUser, caplog: pytest.LogCaptureFixture
    ) -> None:
        task = make_task(client, alice)
        caplog.set_level(logging.INFO, logger="background_tasks")
        response = complete(client, alice, task["id"])
        assert response.status_code == 200
        assert response.json()["completed"] is True
        [record] = notices_logged(caplog)
        assert record.task_id == task["id"]  # type: ignore[attr-defined]
        assert record.user_id == alice.id  # type: ignore[attr-defined]
        # No personal data in the log: neither the address nor the title.
        assert alice.email not in record.getMessage()
        assert "Write report" not in record.getMessage()

    @pytest.mark.parametrize(
        "update",
        [
            pytest.param({"title": "Renamed"}, id="other-field"),
            pytest.param({"completed": False}, id="reopened"),
        ],
    )
    def test_no_notice_unless_the_task_becomes_completed(
        self,
        client: TestClient,
        alice: AuthUser,
        caplog: pytest.LogCaptureFixture,
        update: dict[str, Any],
    ) -> None:
        task = make_task(client, alice)
        caplog.set_level(logging.INFO, logger="background_tasks")
        assert (
            client.patch(f"/tasks/{task['id']}", json=update, headers=alice.headers).status_code
            == 200
        )
        assert notices_logged(caplog) == []

    def test_bulk_update_notifies_each_task_it_completes(
        self, client: TestClient, alice: AuthUser, caplog: pytest.LogCaptureFixture
    ) -> None:
        open_tasks = [make_task(client, alice)["id"] for _ in range(2)]
        done = make_task(client, alice, completed=True)["id"]
        caplog.set_level(logging.INFO, logger="background_tasks")
        response = client.patch(
            "/tasks/bulk",
            json={"task_ids": [*open_tasks, done], "updates": {"completed": True}},
            headers=alice.headers,
        )
        assert response.status_code == 200
        notified = sorted(record.task_id for record in notices_logged(caplog))  # type: ignore[attr-defined]
        assert notified == sorted(open_tasks)

    def test_no_notice_for_a_refused_bulk_update(
        self, client: TestClient, alice: AuthUser, caplog: pytest.LogCaptureFixture
    ) -> None:
        task = make_task(client, alice)["id"]
        caplog.set_level(logging.INFO, logger="background_tasks")
        response = client.patch(
            "/tasks/bulk",
            json={"task_ids": [task, 2147483647], "updates": {"completed": True}},
            headers=alice.headers,
        )
        assert response.status_code == 404
        assert notices_logged(caplog) == []

    def test_no_second_notice_for_an_already_completed_task(
        self, client: TestClient, alice: AuthUser, caplog: pytest.LogCaptureFixture
    ) -> None:
        task = make_task(client, alice, completed=True)
        caplog.set_level(logging.INFO, logger="background_tasks")
        assert complete(client, alice, task["id"], title="Still done").status_code == 200
        assert notices_logged(caplog) == []

    def test_no_notice_for_a_refused_update(
        self,
        client: TestClient,
        alice: AuthUser,
        bob: AuthUser,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        task = make_task(client, alice)
        caplog.set_level(logging.INFO, logger="background_tasks")
        assert complete(client, alice, task["id"], title="").status_code == 422
        assert complete(client, bob, task["id"]).status_code == 404
        assert notices_logged(caplog) == []

    def test_no_notice_when_the_commit_fails(
        self,
        app: FastAPI,
        client: TestClient,
        alice: AuthUser,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        task = make_task(client, alice)

        def commit(self: Session) -> None:
            self.flush()
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

        monkeypatch.setattr(Session, "commit", commit)
        caplog.set_level(logging.INFO, logger="background_tasks")
        response = complete(TestClient(app, raise_server_exceptions=False), alice, task["id"])
        assert response.status_code == 503
        assert notices_logged(caplog) == []


# --- PATCH /tasks/{id} with the SMTP notifier ---------------------------------------------


class TestSmtpNotifier:
    def test_completing_a_task_emails_its_owner(
        self, client: TestClient, alice: AuthUser, inbox: Inbox
    ) -> None:
        task = make_task(client, alice, title="Ship the release")
        response = complete(client, alice, task["id"])
        assert response.status_code == 200
        [message] = inbox.messages
        assert inbox.recipients == [[alice.email]]
        assert message["To"] == alice.email
        assert message["From"] == SENDER
        assert message["Subject"] == "Task completed: Ship the release"
        assert message["Message-ID"]
        body = message.get_content()
        assert f'#{task["id"]} "Ship the release"' in body
        assert alice.username in body

    def test_an_unverified_address_gets_no_notice(
        self, client: TestClient, alice: AuthUser, inbox: Inbox
    ) -> None:
        # Anyone can register any address: until its owner confirms it, nothing is sent there.
        carol = register_and_login(client, "carol")
        carols = make_task(client, carol, title="Carol's")
        alices = make_task(client, alice, title="Alice's")
        assert complete(client, carol, carols["id"]).status_code == 200
        assert inbox.messages == []
        background_tasks.notify_tasks_completed([carols["id"], alices["id"]])
        assert inbox.messages == []  # alice's task is still open, carol's address unverified
        assert complete(client, alice, alices["id"]).status_code == 200
        assert inbox.recipients == [[alice.email]]

    def test_no_email_for_other_changes(
        self, client: TestClient, alice: AuthUser, inbox: Inbox
    ) -> None:
        task = make_task(client, alice)
        client.patch(f"/tasks/{task['id']}", json={"priority": "high"}, headers=alice.headers)
        assert inbox.messages == []

    def test_bulk_notices_go_to_each_owner_in_one_batch(
        self, client: TestClient, alice: AuthUser, bob: AuthUser, inbox: Inbox
    ) -> None:
        done_a = make_task(client, alice, title="Alice's", completed=True)
        done_b = make_task(client, bob, title="Bob's", completed=True)
        still_open = make_task(client, alice, title="Open")
        background_tasks.notify_tasks_completed(
            [done_a["id"], still_open["id"], done_b["id"], 2**31 - 1]
        )
        assert sorted(m["To"] for m in inbox.messages) == sorted([alice.email, bob.email])
        assert sorted(m["Subject"] for m in inbox.messages) == [
            "Task completed: Alice's",
            "Task completed: Bob's",
        ]

    def test_no_ids_sends_nothing(self, inbox: Inbox) -> None:
        background_tasks.notify_tasks_completed([])
        assert inbox.messages == []


class TestBrokenSmtpServer:
    def assert_patch_unaffected(self, client: TestClient, alice: AuthUser, task_id: int) -> None:
        response = complete(client, alice, task_id)
        assert response.status_code == 200, response.text
        assert response.json()["completed"] is True
        stored = client.get(f"/tasks/{task_id}", headers=alice.headers).json()
        assert stored["completed"] is True

    def test_a_server_that_refuses_connections(
        self,
        client: TestClient,
        alice: AuthUser,
        use_settings: Callable[[Settings], None],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        use_settings(smtp_settings(free_port()))  # nothing listens there
        task = make_task(client, alice)
        self.assert_patch_unaffected(client, alice, task["id"])
        [failure] = failures_logged(caplog)
        assert failure.levelno == logging.ERROR
        assert failure.exc_info is not None
        assert isinstance(failure.exc_info[1], ConnectionRefusedError)

    def test_a_server_that_answers_554(
        self,
        client: TestClient,
        alice: AuthUser,
        use_settings: Callable[[Settings], None],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        handler = RefusingServer()
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        try:
            use_settings(smtp_settings(port))
            task = make_task(client, alice)
            self.assert_patch_unaffected(client, alice, task["id"])
        finally:
            controller.stop()
        assert handler.attempts == 1
        [failure] = failures_logged(caplog)
        assert failure.levelno == logging.WARNING
        assert failure.task_id == task["id"]  # type: ignore[attr-defined]

    def test_a_server_that_never_answers_is_given_up_on(
        self,
        client: TestClient,
        alice: AuthUser,
        use_settings: Callable[[Settings], None],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        with socket.socket() as silent:
            # Accepts connections (the kernel completes them) but never sends a greeting.
            silent.bind(("127.0.0.1", 0))
            silent.listen(1)
            use_settings(smtp_settings(silent.getsockname()[1], smtp_timeout_seconds=0.2))
            task = make_task(client, alice)
            self.assert_patch_unaffected(client, alice, task["id"])
        [failure] = failures_logged(caplog)
        assert failure.exc_info is not None
        # smtplib reports the socket timeout as a lost connection.
        assert isinstance(failure.exc_info[1], smtplib.SMTPServerDisconnected)
        assert "timed out" in str(failure.exc_info[1])

    def test_a_password_never_reaches_the_log(
        self,
        client: TestClient,
        alice: AuthUser,
        use_settings: Callable[[Settings], None],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        # aiosmtpd without TLS offers no AUTH, so the login fails after the password is known.
        handler = Inbox()
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        try:
            use_settings(
                smtp_settings(port, smtp_username="mailer", smtp_password="hunter2-secret")
            )
            task = make_task(client, alice)
            self.assert_patch_unaffected(client, alice, task["id"])
        finally:
            controller.stop()
        assert handler.messages == []
        assert failures_logged(caplog)
        assert "hunter2-secret" not in caplog.text
