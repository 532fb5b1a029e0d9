"""Completion notices: sent after the response, by log or by email, and never break a request.

Notices are outbox jobs; the suite's runner has run them by the time the request that caused
them returns (`tests/job_helpers.py`), so each test looks at what was sent right away.
"""

import contextlib
import logging
import smtplib
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SmtpSession
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import Connection, select

import background_tasks
import jobs
import notifications
import outbox
from config import Settings
from db_models import OutboxJob
from models import BulkTaskUpdate, TaskUpdate
from redis_config import MemoryCache
from services import tasks as task_service
from tests.conftest import RESOURCES, AuthUser, register_and_login, verified
from tests.mail_helpers import SENDER, Inbox, smtp_server, smtp_settings
from tests.process_helpers import RedisServer, needs_redis_server
from tests.served_app import free_port
from tests.task_helpers import create_task, insert_tasks
from tests.test_cache import TIMEOUT_SECONDS


class RefusingServer:
    """An aiosmtpd handler that refuses every message, as a broken relay does."""

    def __init__(self) -> None:
        self.attempts = 0

    async def handle_DATA(self, _server: SMTP, _session: SmtpSession, _envelope: Envelope) -> str:
        self.attempts += 1
        return "554 5.3.0 Transaction failed"


@pytest.fixture
def alice(client: TestClient, db_connection: Connection) -> AuthUser:
    return verified(register_and_login(client, "alice"), db_connection)


@pytest.fixture
def bob(client: TestClient, db_connection: Connection) -> AuthUser:
    return verified(register_and_login(client, "bob"), db_connection)


def make_task(client: TestClient, user: AuthUser, **fields: Any) -> dict[str, Any]:
    return create_task(client, user, **{"title": "Write report", **fields})


def complete(client: TestClient, user: AuthUser, task_id: int, **extra: Any) -> Any:
    return client.patch(
        f"/tasks/{task_id}", json={"completed": True, **extra}, headers=user.headers
    )


def events_logged(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


def notices_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return events_logged(caplog, "task_completed")


def failures_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return events_logged(caplog, "notification_failed")


def drops_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return events_logged(caplog, "notices_dropped")


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

    @pytest.mark.parametrize(
        "extra",
        [
            pytest.param({}, id="completed-only"),
            pytest.param({"title": "Still done"}, id="renamed"),
        ],
    )
    def test_no_second_notice_for_an_already_completed_task(
        self,
        client: TestClient,
        alice: AuthUser,
        caplog: pytest.LogCaptureFixture,
        extra: dict[str, Any],
    ) -> None:
        task = make_task(client, alice, completed=True)
        caplog.set_level(logging.INFO, logger="background_tasks")
        assert complete(client, alice, task["id"], **extra).status_code == 200
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
        failing_commit: Callable[..., None],
    ) -> None:
        task = make_task(client, alice)
        failing_commit()
        caplog.set_level(logging.INFO, logger="background_tasks")
        response = complete(TestClient(app, raise_server_exceptions=False), alice, task["id"])
        assert response.status_code == 503
        assert notices_logged(caplog) == []


def test_one_task_and_many_report_and_owe_completions_alike(alice: AuthUser) -> None:
    """Single and bulk updates return the tasks they completed, and owe a notice for exactly
    those: a PATCH that completes a task owes one, re-sending `completed: true` owes none."""
    [single, in_bulk] = insert_tasks(alice.id, 2)
    with RESOURCES.sessions() as session:

        def owed() -> list[int]:
            jobs = session.scalars(
                select(OutboxJob).where(OutboxJob.kind == outbox.TASK_COMPLETED)
            ).all()
            return [job.payload["task_id"] for job in jobs]

        def update_one(updates: dict[str, Any]) -> list[int]:
            data = TaskUpdate.model_validate(updates)
            result = task_service.update_task(
                session,
                owner_id=alice.id,
                task_id=single,
                data=data,
                if_match=None,
                require_if_match=False,
                cache=MemoryCache(),
            )
            assert result.updated.id == single
            return result.newly_completed_ids

        def update_many(updates: dict[str, Any]) -> list[int]:
            data = BulkTaskUpdate.model_validate({"task_ids": [in_bulk], "updates": updates})
            result = task_service.bulk_update(
                session, owner_id=alice.id, data=data, cache=MemoryCache()
            )
            assert [task.id for task in result.updated] == [in_bulk]
            return result.newly_completed_ids

        before = owed()
        for update, task_id in ((update_one, single), (update_many, in_bulk)):
            assert update({"title": "Renamed"}) == []
            assert update({"completed": True}) == [task_id]
            assert update({"completed": True}) == []
            assert update({"completed": True, "title": "Still done"}) == []
            assert update({"completed": False}) == []
        assert owed() == [*before, single, in_bulk]
        session.rollback()


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
        assert (
            background_tasks.send_completion_notices(RESOURCES, [carols["id"], alices["id"]]) == 0
        )
        assert inbox.messages == []  # alice's task is still open, carol's address unverified
        assert complete(client, alice, alices["id"]).status_code == 200
        assert inbox.recipients == [[alice.email]]

    def test_no_email_for_other_changes(
        self, client: TestClient, alice: AuthUser, inbox: Inbox
    ) -> None:
        task = make_task(client, alice)
        response = client.patch(
            f"/tasks/{task['id']}", json={"priority": "high"}, headers=alice.headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["priority"] == "high"
        assert inbox.messages == []

    def test_bulk_notices_go_to_each_owner_in_one_batch(
        self, client: TestClient, alice: AuthUser, bob: AuthUser, inbox: Inbox
    ) -> None:
        done_a = make_task(client, alice, title="Alice's", completed=True)
        done_b = make_task(client, bob, title="Bob's", completed=True)
        still_open = make_task(client, alice, title="Open")
        sent = background_tasks.send_completion_notices(
            RESOURCES, [done_a["id"], still_open["id"], done_b["id"], 2**31 - 1]
        )
        assert sent == 2
        assert sorted(m["To"] for m in inbox.messages) == sorted([alice.email, bob.email])
        assert sorted(m["Subject"] for m in inbox.messages) == [
            "Task completed: Alice's",
            "Task completed: Bob's",
        ]

    def test_no_ids_sends_nothing(self, inbox: Inbox) -> None:
        assert background_tasks.send_completion_notices(RESOURCES, []) == 0
        assert inbox.messages == []


@pytest.fixture
def complete_sending_to(
    client: TestClient, alice: AuthUser, use_settings: Callable[[Settings], None]
) -> Callable[..., int]:
    """Complete a new task of Alice's with notices sent by SMTP to a port (with more settings
    changed as given): the PATCH succeeds and the task is stored completed, whatever the
    server there does. The task's id."""

    def run(port: int, **changes: Any) -> int:
        use_settings(smtp_settings(port, **changes))
        task_id: int = make_task(client, alice)["id"]
        response = complete(client, alice, task_id)
        assert response.status_code == 200, response.text
        assert response.json()["completed"] is True
        stored = client.get(f"/tasks/{task_id}", headers=alice.headers).json()
        assert stored["completed"] is True
        return task_id

    return run


class TestBrokenSmtpServer:
    def test_a_server_that_refuses_connections(
        self, complete_sending_to: Callable[..., int], caplog: pytest.LogCaptureFixture
    ) -> None:
        complete_sending_to(free_port())  # nothing listens there
        [failure] = failures_logged(caplog)
        assert failure.levelno == logging.ERROR
        assert failure.exc_info is not None
        assert isinstance(failure.exc_info[1], ConnectionRefusedError)

    def test_a_server_that_answers_554(
        self, complete_sending_to: Callable[..., int], caplog: pytest.LogCaptureFixture
    ) -> None:
        handler = RefusingServer()
        with smtp_server(handler) as port:
            task_id = complete_sending_to(port)
        assert handler.attempts == 1
        [failure] = failures_logged(caplog)
        assert failure.levelno == logging.WARNING
        assert failure.task_id == task_id  # type: ignore[attr-defined]

    def test_a_server_that_never_answers_is_given_up_on(
        self, complete_sending_to: Callable[..., int], caplog: pytest.LogCaptureFixture
    ) -> None:
        with socket.socket() as silent:
            # Accepts connections (the kernel completes them) but never sends a greeting.
            silent.bind(("127.0.0.1", 0))
            silent.listen(1)
            complete_sending_to(silent.getsockname()[1], smtp_timeout_seconds=0.2)
        [failure] = failures_logged(caplog)
        assert failure.exc_info is not None
        # smtplib reports the socket timeout as a lost connection.
        assert isinstance(failure.exc_info[1], smtplib.SMTPServerDisconnected)
        assert "timed out" in str(failure.exc_info[1])

    def test_a_password_never_reaches_the_log(
        self, complete_sending_to: Callable[..., int], caplog: pytest.LogCaptureFixture
    ) -> None:
        # aiosmtpd without TLS offers no AUTH, so the login fails after the password is known.
        handler = Inbox()
        with smtp_server(handler) as port:
            complete_sending_to(port, smtp_username="mailer", smtp_password="hunter2-secret")
        assert handler.messages == []
        assert failures_logged(caplog)
        assert "hunter2-secret" not in caplog.text


# --- the hourly cap per user --------------------------------------------------------------


def bulk(client: TestClient, user: AuthUser, task_ids: list[int], *, completed: bool) -> None:
    response = client.patch(
        "/tasks/bulk",
        json={"task_ids": task_ids, "updates": {"completed": completed}},
        headers=user.headers,
    )
    assert response.status_code == 200, response.text


class TestNoticeCap:
    def test_a_user_gets_at_most_the_hourly_limit_and_the_rest_are_counted(
        self,
        client: TestClient,
        alice: AuthUser,
        bob: AuthUser,
        inbox: Inbox,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        limit = Settings.model_fields["notice_limit_per_hour"].default
        assert limit == 30
        tasks = [make_task(client, alice, title=f"Bcc: spam {n}")["id"] for n in range(limit + 10)]
        # Complete, reopen and complete again: the way 10 requests sent 500 e-mails.
        bulk(client, alice, tasks, completed=True)
        bulk(client, alice, tasks, completed=False)
        bulk(client, alice, tasks, completed=True)
        assert len(inbox.messages) == limit
        assert {m["To"] for m in inbox.messages} == {alice.email}
        drops = drops_logged(caplog)
        # Each completion is its own job: every notice over the limit is dropped and counted.
        assert {getattr(r, "user_id", None) for r in drops} == {alice.id}
        assert sum(getattr(r, "dropped", 0) for r in drops) == 10 + limit + 10
        assert all(r.levelno == logging.WARNING for r in drops)
        # The budget is per user: another account's notice still goes out.
        assert complete(client, bob, make_task(client, bob)["id"]).status_code == 200
        assert [m["To"] for m in inbox.messages[limit:]] == [bob.email]

    @pytest.mark.parametrize("limit", [2, 0], ids=["two", "zero-sends-none"])
    def test_the_log_notifier_is_capped_too(
        self,
        client: TestClient,
        alice: AuthUser,
        use_settings: Callable[[Settings], None],
        caplog: pytest.LogCaptureFixture,
        limit: int,
    ) -> None:
        use_settings(Settings(notice_limit_per_hour=limit))
        tasks = [make_task(client, alice)["id"] for _ in range(limit + 1)]
        caplog.set_level(logging.INFO, logger="background_tasks")
        bulk(client, alice, tasks, completed=True)
        assert sorted(r.task_id for r in notices_logged(caplog)) == tasks[:limit]  # type: ignore[attr-defined]
        assert [getattr(r, "dropped", None) for r in drops_logged(caplog)] == [1]

    def test_the_memory_budget_is_a_sliding_hour(self) -> None:
        now = [1000.0]
        budget = notifications.MemoryNoticeBudget(clock=lambda: now[0])
        assert budget.take(1, 2, 3) == 2
        now[0] += 1800
        assert budget.take(1, 5, 3) == 1
        assert budget.take(2, 5, 3) == 3
        now[0] += 1800  # the first two leave the window; the third is 30 minutes old
        assert budget.take(1, 5, 3) == 2
        now[0] += 3600
        assert budget.take(1, 5, 3) == 3


# --- a slow or silent mail server ---------------------------------------------------------


class SilentMailServer:
    """Accepts connections and never says a word, as a wedged mail server does."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port: int = self._listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.accepted = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.connections.append(connection)
            self.accepted.set()

    def waiting_client(self) -> bool:
        """Whether the first client is still connected, waiting for a greeting it never gets."""
        connection = self.connections[0]
        connection.setblocking(False)
        try:
            connection.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True  # open, and nothing sent: smtplib is waiting for the greeting
        finally:
            connection.setblocking(True)
        return False  # closed (b"") or sent something: the client gave up

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self._thread.join(timeout=5)
        for connection in self.connections:
            connection.close()


class TestSilentMailServer:
    def test_a_silent_mail_server_delays_no_request(
        self,
        client: TestClient,
        alice: AuthUser,
        use_settings: Callable[[Settings], None],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        server = SilentMailServer()
        # The embedded runner as `make run` has it: jobs on its own thread, not awaited.
        runner = jobs.InProcessRunner(RESOURCES, sweep_seconds=None)
        previous, RESOURCES.runner = RESOURCES.runner, runner
        runner.start()
        try:
            # Long enough that any request waiting on the mail server would still be waiting.
            use_settings(smtp_settings(server.port, smtp_timeout_seconds=60))
            first, second = make_task(client, alice)["id"], make_task(client, alice)["id"]
            assert complete(client, alice, first).status_code == 200
            assert server.accepted.wait(30)
            # The response came back while its notice is still stuck on the mail server ...
            assert server.waiting_client()
            # ... and every other route keeps answering meanwhile, writes and notices too.
            assert client.get("/tasks", headers=alice.headers).status_code == 200
            assert client.get("/tasks/stats", headers=alice.headers).status_code == 200
            assert complete(client, alice, second).status_code == 200
            assert client.get(f"/tasks/{second}", headers=alice.headers).json()["completed"]
            assert server.waiting_client()
        finally:
            server.close()
            assert runner.wait_idle(30)
            runner.stop()
            RESOURCES.runner = previous
        [*failures] = failures_logged(caplog)
        assert failures
        # The first notice timed out on the silent server; the second found it closed.
        assert all(
            isinstance(f.exc_info[1], smtplib.SMTPServerDisconnected | ConnectionRefusedError)  # type: ignore[index]
            for f in failures
        )


# --- the count shared through Redis -------------------------------------------------------


@needs_redis_server
class TestSharedNoticeBudget:
    def test_instances_on_one_redis_share_the_count_and_prefixes_keep_deployments_apart(
        self, redis_server: RedisServer
    ) -> None:
        budgets = [
            notifications.NoticeBudget(
                redis_url=redis_server.url, key_prefix=prefix, timeout_seconds=TIMEOUT_SECONDS
            )
            for prefix in ("deploy-a", "deploy-a", "deploy-b")
        ]
        try:
            first, second, other = budgets
            assert first.take(7, 20, 30) == 20
            assert second.take(7, 20, 30) == 10
            assert first.take(7, 1, 30) == 0
            assert other.take(7, 20, 30) == 20
        finally:
            for budget in budgets:
                budget.close()
        with redis.Redis.from_url(redis_server.url, decode_responses=True) as raw:
            assert sorted(raw.keys("*")) == ["deploy-a:notices:7", "deploy-b:notices:7"]
            assert 0 < raw.ttl("deploy-a:notices:7") <= 3600

    def test_the_app_counts_in_redis(
        self,
        client: TestClient,
        alice: AuthUser,
        use_settings: Callable[[Settings], None],
        redis_server: RedisServer,
    ) -> None:
        inbox = Inbox()
        with smtp_server(inbox) as port:
            settings = smtp_settings(port, redis_url=redis_server.url, notice_limit_per_hour=2)
            use_settings(settings)
            tasks = [make_task(client, alice)["id"] for _ in range(3)]
            bulk(client, alice, tasks, completed=True)
        assert len(inbox.messages) == 2
        with redis.Redis.from_url(redis_server.url, decode_responses=True) as raw:
            key = f"{settings.redis_key_prefix}:notices:{alice.id}"
            assert raw.keys("*") == [key]
            assert raw.zcard(key) == 2

    def test_a_failing_redis_falls_back_to_counting_in_process(
        self, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        budget = notifications.NoticeBudget(
            redis_url=redis_server.url, key_prefix="deploy-a", timeout_seconds=TIMEOUT_SECONDS
        )
        try:
            assert budget.take(7, 1, 3) == 1
            redis_server.stop()
            # Never raises: this process goes on counting on its own.
            assert budget.take(7, 2, 3) == 2
            assert budget.take(7, 2, 3) == 1
            assert budget.take(7, 2, 3) == 0
        finally:
            budget.close()
        warnings = [r for r in caplog.records if r.name == "notifications"]
        assert [getattr(r, "event", None) for r in warnings] == ["notice_budget_fallback"]
