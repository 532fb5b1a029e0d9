"""The embedded default (`make run`): one process, its jobs on its own runner thread.

The process is killed with SIGKILL while its runner is sending a notice; once it is up again,
the notice is sent, exactly once. It runs on a SQLite file of its own, whatever the pass.
"""

import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select

from db_models import OutboxJob
from tests.conftest import PASSWORD
from tests.mail_helpers import SENDER
from tests.process_helpers import GatedInbox, gated_inbox, migrate, serve_api, wait_until
from tests.served_app import free_port

JOB_TIMEOUT_SECONDS = 2


@pytest.fixture
def inbox() -> Iterator[GatedInbox]:
    with gated_inbox() as handler:
        yield handler


def test_a_process_killed_while_sending_sends_the_notice_once_it_is_back(
    tmp_path: Path, inbox: GatedInbox
) -> None:
    database_url = f"sqlite:///{tmp_path / 'embedded.db'}"
    migrate(database_url)
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": "",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "BCRYPT_ROUNDS": "4",
        "RATE_LIMIT_ENABLED": "false",
        "NOTIFIER": "smtp",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(inbox.port),
        "SMTP_FROM": SENDER,
        "SMTP_STARTTLS": "false",
        "JOB_TIMEOUT_SECONDS": str(JOB_TIMEOUT_SECONDS),
        "OUTBOX_SWEEP_SECONDS": "0.5",
        "UPLOAD_DIR": str(tmp_path / "uploads"),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = serve_api("embedded", port, env=env, log_dir=logs)
    try:
        account = {"username": "frank", "email": "frank@example.com", "password": PASSWORD}
        assert httpx.post(f"{url}/auth/register", json=account).status_code == 201
        # Notices go to verified addresses only (verifying by e-mail is tested elsewhere).
        with sqlite3.connect(tmp_path / "embedded.db") as db:
            db.execute("UPDATE users SET email_verified = 1 WHERE username = 'frank'")
        db.close()
        login = {"username": "frank", "password": PASSWORD}
        token = httpx.post(f"{url}/auth/login", json=login).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        task = httpx.post(f"{url}/tasks", json={"title": "Survive"}, headers=headers).json()

        inbox.hold.set()
        response = httpx.patch(
            f"{url}/tasks/{task['id']}", json={"completed": True}, headers=headers
        )
        assert response.status_code == 200
        wait_until(inbox.held.is_set, "the runner thread to be sending the notice")
        api.kill()
        inbox.hold.clear()
        assert inbox.messages == []

        api = serve_api("embedded", port, env=env, log_dir=logs)
        engine = create_engine(database_url)
        try:

            def done() -> bool:
                with engine.connect() as connection:
                    return connection.scalar(select(OutboxJob.done_at)) is not None

            # Once the killed run's lease expires, the restarted runner's sweep runs it again.
            wait_until(done, "the notice job to be done")
            with engine.connect() as connection:
                assert connection.scalar(select(OutboxJob.attempts)) == 2
        finally:
            engine.dispose()
        assert [message["Subject"] for message in inbox.messages] == ["Task completed: Survive"]
    finally:
        api.stop()
