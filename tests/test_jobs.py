"""Durable jobs: recorded in the change's transaction, run after its commit, once per completion.

Most tests hold the jobs a request commits (`held_jobs`) and run them themselves, so that each
step (recorded, claimed, failed, retried, done) can be looked at.
"""

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from rq import SimpleWorker
from sqlalchemy import Connection, insert, select, update

import db_config
import jobs
import metrics
import outbox
from config import PROJECT_DIR, Settings, get_settings
from db_models import OutboxJob, utcnow
from redis_config import key_prefix
from tests.conftest import RESOURCES, AuthUser, register_and_login, verified
from tests.job_helpers import HeldJobs
from tests.mail_helpers import Inbox, smtp_server, smtp_settings
from tests.served_app import free_port
from tests.task_helpers import create_task, stored_key, upload_file

PDF = b"%PDF-1.7\nhello\n"

# Tests that serve the app in another process commit their jobs to the shared database.
pytestmark = pytest.mark.usefixtures("empty_outbox")


# --- helpers ------------------------------------------------------------------------------


def complete(client: TestClient, user: AuthUser, task_id: int) -> None:
    response = client.patch(f"/tasks/{task_id}", json={"completed": True}, headers=user.headers)
    assert response.status_code == 200, response.text


def held_notice_jobs(
    client: TestClient, user: AuthUser, held_jobs: HeldJobs, count: int
) -> list[int]:
    """Complete `count` new tasks, one at a time; the ids of the notice jobs they held back."""
    ids: list[int] = []
    for _ in range(count):
        complete(client, user, create_task(client, user)["id"])
        ids += held_jobs.take()
    return ids


def row(connection: Connection, job_id: int) -> Any:
    return connection.execute(select(OutboxJob).where(OutboxJob.id == job_id)).one()


@pytest.fixture
def alice(client: TestClient, db_connection: Connection) -> AuthUser:
    """Alice with a verified address, so her completions send notices."""
    return verified(register_and_login(client, "alice"), db_connection)


def rows(connection: Connection) -> list[Any]:
    return list(connection.execute(select(OutboxJob).order_by(OutboxJob.id)).all())


def set_row(job_id: int, **values: Any) -> None:
    with db_config.transaction(RESOURCES.sessions) as session:
        session.execute(update(OutboxJob).where(OutboxJob.id == job_id).values(**values))


def event_count(name: str, **labels: str) -> int:
    return RESOURCES.events.snapshot().get(metrics.event_key(name, labels), 0)


def upload(client: TestClient, user: AuthUser, task_id: int, name: str) -> int:
    return upload_file(client, user, task_id, name, PDF)


def stored_path(connection: Connection, file_id: int) -> Path:
    return get_settings().upload_dir / stored_key(connection, file_id)


def key_of(path: Path) -> str:
    """The storage key of a locally stored file (its namespace folder and name)."""
    return path.relative_to(get_settings().upload_dir).as_posix()


@pytest.fixture
def task_id(client: TestClient, alice: AuthUser) -> int:
    task_id: int = create_task(client, alice, title="Ship it")["id"]
    return task_id


@pytest.fixture
def notice_job(client: TestClient, alice: AuthUser, task_id: int, held_jobs: HeldJobs) -> int:
    """The id of the notice job committed with the completion of alice's task, not run yet."""
    complete(client, alice, task_id)
    [job_id] = held_jobs.take()
    return job_id


@pytest.fixture
def no_job(held_jobs: HeldJobs, db_connection: Connection) -> Callable[[], None]:
    """Call to check that no job was dispatched, and none committed."""

    def check() -> None:
        assert held_jobs.take() == []
        assert rows(db_connection) == []

    return check


# --- recorded with the change -------------------------------------------------------------


class TestRecording:
    def test_a_completion_commits_one_notice_job(
        self, notice_job: int, task_id: int, db_connection: Connection
    ) -> None:
        [job] = rows(db_connection)
        assert job.id == notice_job
        assert (job.kind, job.payload) == (outbox.TASK_COMPLETED, {"task_id": task_id})
        assert (job.attempts, job.done_at, job.claimed_until) == (0, None, None)

    def test_bulk_commits_one_job_per_task_it_completes(
        self, client: TestClient, alice: AuthUser, held_jobs: HeldJobs, db_connection: Connection
    ) -> None:
        open_ids = [create_task(client, alice)["id"] for _ in range(3)]
        done = create_task(client, alice, completed=True)["id"]
        response = client.patch(
            "/tasks/bulk",
            json={"task_ids": [*open_ids, done], "updates": {"completed": True}},
            headers=alice.headers,
        )
        assert response.status_code == 200
        assert len(held_jobs.take()) == 3
        assert sorted(job.payload["task_id"] for job in rows(db_connection)) == open_ids

    @pytest.mark.parametrize(
        "body",
        [{"title": "Renamed"}, {"completed": False}, {"completed": True, "title": ""}],
        ids=["other-field", "reopened", "refused"],
    )
    def test_no_job_without_a_completion(
        self,
        client: TestClient,
        alice: AuthUser,
        task_id: int,
        no_job: Callable[[], None],
        body: dict[str, Any],
    ) -> None:
        client.patch(f"/tasks/{task_id}", json=body, headers=alice.headers)
        no_job()

    def test_no_job_for_a_task_completed_already_or_someone_elses(
        self,
        client: TestClient,
        alice: AuthUser,
        bob: AuthUser,
        no_job: Callable[[], None],
    ) -> None:
        done = create_task(client, alice, completed=True)["id"]
        complete(client, alice, done)
        response = client.patch(f"/tasks/{done}", json={"completed": True}, headers=bob.headers)
        assert response.status_code == 404
        no_job()

    def test_a_failed_commit_leaves_no_job_and_dispatches_none(
        self,
        app: FastAPI,
        alice: AuthUser,
        task_id: int,
        no_job: Callable[[], None],
        failing_commit: Callable[..., None],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        failing_commit()
        response = TestClient(app, raise_server_exceptions=False).patch(
            f"/tasks/{task_id}", json={"completed": True}, headers=alice.headers
        )
        assert response.status_code == 503
        monkeypatch.undo()
        no_job()

    def test_deleting_a_task_commits_the_removal_of_its_files_bytes(
        self,
        client: TestClient,
        alice: AuthUser,
        task_id: int,
        held_jobs: HeldJobs,
        db_connection: Connection,
    ) -> None:
        paths = [
            stored_path(db_connection, upload(client, alice, task_id, f"{n}.pdf")) for n in "ab"
        ]
        assert client.delete(f"/tasks/{task_id}", headers=alice.headers).status_code == 204
        [job_id] = held_jobs.take()
        job = row(db_connection, job_id)
        assert job.kind == outbox.REMOVE_STORED_FILES
        assert sorted(job.payload["stored_filenames"]) == sorted(key_of(p) for p in paths)
        # Removed by the job, not by the request.
        assert all(path.exists() for path in paths)
        jobs.run_job(RESOURCES, job_id)
        assert not any(path.exists() for path in paths)
        assert row(db_connection, job_id).done_at is not None

    def test_deleting_a_task_without_files_owes_nothing(
        self, client: TestClient, alice: AuthUser, task_id: int, held_jobs: HeldJobs
    ) -> None:
        assert client.delete(f"/tasks/{task_id}", headers=alice.headers).status_code == 204
        assert held_jobs.take() == []

    def test_deleting_a_file_commits_the_removal_of_its_bytes(
        self,
        client: TestClient,
        alice: AuthUser,
        task_id: int,
        held_jobs: HeldJobs,
        db_connection: Connection,
    ) -> None:
        file_id = upload(client, alice, task_id, "a.pdf")
        path = stored_path(db_connection, file_id)
        assert client.delete(f"/files/{file_id}", headers=alice.headers).status_code == 204
        [job_id] = held_jobs.take()
        assert row(db_connection, job_id).payload == {"stored_filenames": [key_of(path)]}
        assert path.exists()
        jobs.run_job(RESOURCES, job_id)
        assert not path.exists()
        # Bytes already gone are no error: a second removal succeeds too.
        jobs.remove_stored_files(RESOURCES, [key_of(path)])


# --- running a job ------------------------------------------------------------------------


class TestRunning:
    def test_a_job_run_twice_sends_one_notice(
        self, notice_job: int, inbox: Inbox, db_connection: Connection
    ) -> None:
        jobs.run_job(RESOURCES, notice_job)
        jobs.run_job(RESOURCES, notice_job)
        assert len(inbox.messages) == 1
        assert inbox.messages[0]["Subject"] == "Task completed: Ship it"
        job = row(db_connection, notice_job)
        assert job.done_at is not None
        assert job.attempts == 1

    def test_a_job_leased_by_a_live_run_is_left_to_it(
        self, notice_job: int, inbox: Inbox, db_connection: Connection
    ) -> None:
        set_row(notice_job, claimed_until=utcnow() + timedelta(minutes=1), attempts=1)
        jobs.run_job(RESOURCES, notice_job)
        assert inbox.messages == []
        assert row(db_connection, notice_job).done_at is None

    def test_the_lease_of_a_run_that_died_expires(
        self, notice_job: int, inbox: Inbox, db_connection: Connection
    ) -> None:
        set_row(notice_job, claimed_until=utcnow() - timedelta(seconds=1), attempts=1)
        jobs.run_job(RESOURCES, notice_job)
        assert len(inbox.messages) == 1
        job = row(db_connection, notice_job)
        assert (job.attempts, job.done_at is not None, job.claimed_until) == (2, True, None)

    def test_a_failing_job_is_retried_later_then_succeeds(
        self,
        notice_job: int,
        use_settings: Callable[[Settings], None],
        db_connection: Connection,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        failures_before = event_count("job_failures", kind=outbox.TASK_COMPLETED)
        use_settings(smtp_settings(free_port()))  # nothing listens there
        started = utcnow()
        jobs.run_job(RESOURCES, notice_job)
        job = row(db_connection, notice_job)
        assert (job.attempts, job.done_at, job.claimed_until) == (1, None, None)
        assert job.last_error.startswith("ConnectionRefusedError")
        assert job.available_at >= started + timedelta(seconds=30)
        [warning] = [r for r in caplog.records if getattr(r, "event", None) == "job_failed"]
        assert warning.levelno == logging.WARNING
        assert event_count("job_failures", kind=outbox.TASK_COMPLETED) == failures_before + 1

        handler = Inbox()
        with smtp_server(handler) as port:
            use_settings(smtp_settings(port))
            jobs.run_job(RESOURCES, notice_job)
        assert len(handler.messages) == 1
        job = row(db_connection, notice_job)
        assert (job.attempts, job.last_error) == (2, None)
        assert job.done_at is not None

    def test_a_job_is_given_up_after_its_last_attempt(
        self,
        notice_job: int,
        use_settings: Callable[[Settings], None],
        db_connection: Connection,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        dropped_before = event_count("notices_dropped", reason="failed")
        use_settings(smtp_settings(free_port(), job_max_attempts=2))
        jobs.run_job(RESOURCES, notice_job)
        set_row(notice_job, available_at=utcnow())
        jobs.run_job(RESOURCES, notice_job)
        job = row(db_connection, notice_job)
        assert (job.attempts, job.done_at is not None) == (2, True)
        assert job.last_error.startswith("ConnectionRefusedError")
        [record] = [r for r in caplog.records if getattr(r, "event", None) == "job_abandoned"]
        assert record.levelno == logging.ERROR
        assert event_count("notices_dropped", reason="failed") == dropped_before + 1
        jobs.run_job(RESOURCES, notice_job)
        assert row(db_connection, notice_job).attempts == 2

    def test_a_job_of_an_unknown_kind_fails_without_harm(self, db_connection: Connection) -> None:
        with db_config.transaction(RESOURCES.sessions) as session:
            job_id = session.scalar(
                insert(OutboxJob).values(kind="unheard_of", payload={}).returning(OutboxJob.id)
            )
        assert job_id is not None
        jobs.run_job(RESOURCES, job_id)
        job = row(db_connection, job_id)
        assert job.last_error.startswith("LookupError")
        assert job.done_at is None

    def test_the_notice_of_a_task_reopened_meanwhile_is_not_sent(
        self,
        client: TestClient,
        alice: AuthUser,
        task_id: int,
        notice_job: int,
        inbox: Inbox,
        db_connection: Connection,
    ) -> None:
        client.patch(f"/tasks/{task_id}", json={"completed": False}, headers=alice.headers)
        jobs.run_job(RESOURCES, notice_job)
        assert inbox.messages == []
        assert row(db_connection, notice_job).done_at is not None


# --- the sweep ----------------------------------------------------------------------------


class TestSweep:
    def test_dispatches_what_is_due_unleased_and_not_done(
        self,
        client: TestClient,
        alice: AuthUser,
        held_jobs: HeldJobs,
        inbox: Inbox,
    ) -> None:
        ids = held_notice_jobs(client, alice, held_jobs, 4)
        done, leased, later, lost = ids
        jobs.run_job(RESOURCES, done)
        set_row(leased, claimed_until=utcnow() + timedelta(minutes=1), attempts=1)
        set_row(later, available_at=utcnow() + timedelta(minutes=1), attempts=1)
        report = jobs.sweep(RESOURCES, held_jobs)
        assert report.dispatched == [lost]
        assert held_jobs.take() == [lost]

    def test_gives_up_jobs_whose_runs_never_finished(
        self, notice_job: int, held_jobs: HeldJobs, db_connection: Connection
    ) -> None:
        dropped_before = event_count("notices_dropped", reason="failed")
        attempts = get_settings().job_max_attempts
        set_row(notice_job, claimed_until=utcnow() - timedelta(seconds=1), attempts=attempts)
        report = jobs.sweep(RESOURCES, held_jobs)
        assert report.given_up == [notice_job]
        assert held_jobs.take() == []
        job = row(db_connection, notice_job)
        assert job.done_at is not None
        assert job.last_error == "the runs did not finish"
        assert event_count("notices_dropped", reason="failed") == dropped_before + 1

    def test_purges_rows_done_long_ago(
        self,
        client: TestClient,
        alice: AuthUser,
        held_jobs: HeldJobs,
        db_connection: Connection,
    ) -> None:
        ids = held_notice_jobs(client, alice, held_jobs, 2)
        old, recent = ids
        set_row(old, done_at=utcnow() - outbox.DONE_RETENTION - timedelta(minutes=1))
        set_row(recent, done_at=utcnow() - timedelta(days=1))
        assert jobs.sweep(RESOURCES, held_jobs).purged == 1
        assert [job.id for job in rows(db_connection)] == [recent]


# --- the in-process runner (the embedded default) -----------------------------------------


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.02)


class TestInProcessRunner:
    def test_runs_jobs_on_its_own_thread(
        self, notice_job: int, db_connection: Connection, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="background_tasks")
        runner = jobs.InProcessRunner(RESOURCES, sweep_seconds=None)
        runner.start()
        try:
            runner.submit([notice_job])
            assert runner.wait_idle(30)
        finally:
            runner.stop()
        [record] = [r for r in caplog.records if getattr(r, "event", None) == "task_completed"]
        assert record.threadName == "job-runner"
        assert row(db_connection, notice_job).done_at is not None

    def test_sweeps_at_start_for_jobs_a_crash_left(
        self, notice_job: int, db_connection: Connection, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="background_tasks")
        runner = jobs.InProcessRunner(RESOURCES, sweep_seconds=3600)
        runner.start()
        try:
            # Nothing was submitted: only the sweep at start can find the committed job.
            wait_until(lambda: row(db_connection, notice_job).done_at is not None, "the sweep")
            assert runner.wait_idle(30)
        finally:
            runner.stop()
        assert len([r for r in caplog.records if getattr(r, "event", None) == "task_completed"])

    def test_a_job_waiting_twice_runs_once_for_the_sweep(self, notice_job: int) -> None:
        runner = jobs.InProcessRunner(RESOURCES, sweep_seconds=None)
        runner.submit([notice_job])
        runner.resubmit([notice_job])
        assert runner.queued() == 1


# --- RQ (production) ------------------------------------------------------------------------


def work_off(queue_runner: jobs.RqRunner) -> None:
    """Run what is queued with a real RQ worker, in this thread, then return."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker = SimpleWorker([queue_runner.queue], connection=queue_runner.connection)
        worker.work(burst=True, logging_level="WARNING")
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.fixture
def rq_runner() -> Iterator[jobs.RqRunner]:
    runner = jobs.RqRunner(get_settings())
    try:
        yield runner
    finally:
        runner.connection.close()


@pytest.mark.postgres_redis
class TestRq:
    def test_the_queue_name_carries_the_deployments_prefix(self, rq_runner: jobs.RqRunner) -> None:
        prefix = key_prefix(get_settings())
        assert prefix == get_settings().redis_key_prefix + ":"
        assert rq_runner.queue.name == prefix + "jobs"

    def test_a_worker_runs_the_queued_job_once(
        self, notice_job: int, inbox: Inbox, rq_runner: jobs.RqRunner, db_connection: Connection
    ) -> None:
        rq_runner.submit([notice_job])
        rq_runner.resubmit([notice_job])
        assert rq_runner.queued() == 1
        [rq_id] = rq_runner.queue.get_job_ids()
        assert rq_id.startswith(f"outbox-{notice_job}-")
        work_off(rq_runner)
        assert rq_runner.queued() == 0
        assert len(inbox.messages) == 1
        assert row(db_connection, notice_job).done_at is not None

    def test_a_redis_flush_loses_nothing_the_sweep_enqueues_it_again(
        self, notice_job: int, inbox: Inbox, rq_runner: jobs.RqRunner
    ) -> None:
        rq_runner.submit([notice_job])
        rq_runner.connection.flushdb()
        assert rq_runner.queued() == 0
        first, second = (
            jobs.Sweeper(RESOURCES, rq_runner),
            jobs.Sweeper(RESOURCES, rq_runner),
        )
        assert first.sweep_if_first() is True
        # One sweep per interval across every worker: the lock is taken.
        assert second.sweep_if_first() is False
        assert rq_runner.queued() == 1
        work_off(rq_runner)
        assert len(inbox.messages) == 1


class TestUnreachableQueue:
    def test_an_enqueue_that_fails_loses_no_job(
        self, notice_job: int, db_connection: Connection, caplog: pytest.LogCaptureFixture
    ) -> None:
        settings = get_settings().model_copy(
            update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}
        )
        runner = jobs.RqRunner(settings)
        runner.submit([notice_job])  # never raises
        assert "the outbox sweep will" in caplog.text
        assert runner.queued() is None
        # Still owed: the next sweep finds it.
        assert jobs.sweep(RESOURCES, HeldJobs()).dispatched == [notice_job]
        assert row(db_connection, notice_job).done_at is None


class TestWorkerCommand:
    def test_refuses_to_start_without_redis(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "worker"],
            cwd=PROJECT_DIR,
            env={**os.environ, "REDIS_URL": ""},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        assert "REDIS_URL is not set" in result.stderr


def test_queue_and_sweep_lock_carry_the_deployments_redis_key_prefix() -> None:
    base = get_settings()
    a = base.model_copy(update={"redis_key_prefix": "shop"})
    b = base.model_copy(update={"redis_key_prefix": "other"})
    assert key_prefix(a) == "shop:"
    assert jobs.queue_name(a) == "shop:jobs"
    assert jobs.queue_name(b) == "other:jobs"
    assert jobs.sweep_lock_key(a) != jobs.sweep_lock_key(b)
