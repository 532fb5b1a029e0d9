"""Two API instances, job workers, one PostgreSQL, one Redis, one bucket and a real SMTP server.

Each instance is a uvicorn process of its own on its own port, each worker a `python -m worker`
process (what `make worker` runs); they share nothing but the database, Redis, the bucket (the
s3 storage backend on a real S3-compatible server) and their settings. Each process has an
upload folder of its own, as on separate machines, so only the bucket can carry a file's bytes
from one to another. Processes are killed with SIGKILL where a crash is the point. The database
is a fresh one of its own (these processes commit for real), dropped afterwards.
"""

import hashlib
import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, make_url, select, text, update
from sqlalchemy.engine import Engine

from db_models import OutboxJob, TaskFile, User
from routers.files import content_disposition
from tests.conftest import PASSWORD, RESOURCES, TEST_REDIS_URL
from tests.mail_helpers import SENDER
from tests.process_helpers import (
    GatedInbox,
    Process,
    gated_inbox,
    migrate,
    serve_api,
    spawn,
    wait_until,
)
from tests.s3_server import S3Server
from tests.served_app import free_port

pytestmark = pytest.mark.postgres_redis

METRICS_TOKEN = "instances-metrics-token-0123456789"
CREATE_TASK_LIMIT = 6
# Short, so that the tests that kill a worker mid-job wait little for its lease to expire.
JOB_TIMEOUT_SECONDS = 4
PRESIGN_SECONDS = 60
# Larger than one chunk of a streamed download, so a download is more than one read.
ATTACHMENT = b"%PDF-1.7\n" + os.urandom(300 * 1024)


# No generated repr: a failing assertion would print the settings, secrets included.
@dataclass(repr=False)
class Cluster:
    env: dict[str, str]
    directory: Path
    engine: Engine
    s3: S3Server
    ports: dict[str, int] = field(default_factory=dict)
    apis: dict[str, Process] = field(default_factory=dict)
    workers: list[Process] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return self.directory / "logs"

    @property
    def queue_key(self) -> str:
        return f"rq:queue:{self.env['REDIS_KEY_PREFIX']}:jobs"

    @property
    def bucket(self) -> str:
        return self.env["S3_BUCKET"]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def env_of(self, name: str, **settings: str) -> dict[str, str]:
        """The shared settings, the process's own upload folder, and `settings` on top."""
        return {**self.env, "UPLOAD_DIR": str(self.directory / f"uploads-{name}"), **settings}

    def uploaded_files(self) -> list[Path]:
        """Files in any process's upload folder: with s3 there are none once uploads are done."""
        return [path for path in self.directory.glob("uploads-*/**/*") if path.is_file()]

    def start_api(self, name: str, **settings: str) -> None:
        port = self.ports.setdefault(name, free_port())
        env = self.env_of(name, **settings)
        self.apis[name] = serve_api(name, port, env=env, log_dir=self.logs)

    def kill_api(self, name: str) -> None:
        self.apis.pop(name).kill()

    def start_worker(self) -> Process:
        process = spawn("worker", ["-m", "worker"], env=self.env_of("worker"), log_dir=self.logs)
        self.workers.append(process)
        wait_until(
            lambda: "Worker started on queue" in process.log.read_text(), "the worker to start"
        )
        return process

    def kill_workers(self) -> None:
        for process in self.workers:
            process.kill()
        self.workers.clear()

    def stop(self) -> None:
        for process in [*self.apis.values(), *self.workers]:
            process.stop()
        self.apis.clear()
        self.workers.clear()

    def queued(self) -> int:
        with redis.Redis.from_url(TEST_REDIS_URL) as client:
            return int(client.llen(self.queue_key))

    def jobs_not_done(self) -> int:
        with self.engine.connect() as connection:
            found = connection.execute(
                select(OutboxJob.id).where(OutboxJob.done_at.is_(None))
            ).all()
        return len(found)

    def attempts(self) -> list[int]:
        with self.engine.connect() as connection:
            return list(connection.scalars(select(OutboxJob.attempts).order_by(OutboxJob.id)))

    def quiet(self) -> bool:
        """Every job done: nothing can send a notice any more."""
        return self.jobs_not_done() == 0

    def key_of(self, file_id: int) -> str:
        with self.engine.connect() as connection:
            key = connection.scalar(select(TaskFile.stored_filename).where(TaskFile.id == file_id))
        assert key is not None
        return key

    def in_bucket(self, key: str) -> bytes | None:
        """The bytes stored under `key` in the shared bucket, read directly; None if none are."""
        try:
            found = self.s3.client().get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchKey":
                return None
            raise
        return found["Body"].read()


@dataclass
class Client:
    """One user, talking to whichever instance each call names."""

    cluster: Cluster
    username: str
    email: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def call(
        self,
        instance: str,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        return httpx.request(
            method,
            self.cluster.url(instance) + path,
            headers={**self.headers, **(headers or {})},
            timeout=30,
            **kwargs,
        )

    def register(self, on: str, login_on: str) -> "Client":
        self.email = f"{self.username}@example.com"
        body = {"username": self.username, "email": self.email, "password": PASSWORD}
        assert self.call(on, "POST", "/auth/register", json=body).status_code == 201
        # Notices go to verified addresses only (verifying by e-mail is tested elsewhere).
        with self.cluster.engine.begin() as connection:
            connection.execute(
                update(User).where(User.username == self.username).values(email_verified=True)
            )
        response = self.call(
            login_on,
            "POST",
            "/auth/login",
            json={"username": self.username, "password": PASSWORD},
        )
        assert response.status_code == 200, response.text
        self.headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
        return self

    def create_task(self, on: str, title: str) -> int:
        response = self.call(on, "POST", "/tasks", json={"title": title})
        assert response.status_code == 201, response.text
        task_id: int = response.json()["id"]
        return task_id

    def complete(self, on: str, task_id: int) -> None:
        response = self.call(on, "PATCH", f"/tasks/{task_id}", json={"completed": True})
        assert response.status_code == 200, response.text

    def upload(self, on: str, task_id: int, name: str, content: bytes = ATTACHMENT) -> int:
        response = self.call(on, "POST", f"/tasks/{task_id}/files", files={"file": (name, content)})
        assert response.status_code == 201, response.text
        assert response.json()["sha256"] == hashlib.sha256(content).hexdigest()
        file_id: int = response.json()["id"]
        return file_id


@pytest.fixture(scope="module")
def inbox() -> Iterator[GatedInbox]:
    with gated_inbox() as handler:
        yield handler


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    name = f"tm_instances_{uuid.uuid4().hex[:12]}"
    admin = create_engine(RESOURCES.engine.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(RESOURCES.engine.url).set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    """A bucket of the cluster's own: everything in it was stored by the cluster."""
    name = f"tm-instances-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def cluster(
    database_url: str,
    inbox: GatedInbox,
    s3_server: S3Server,
    bucket: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """Instances `a` and `b` and one worker, sharing the settings every instance must share."""
    directory = tmp_path_factory.mktemp("instances")
    prefix = f"tm-instances-{uuid.uuid4().hex[:8]}"
    (directory / "logs").mkdir()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": TEST_REDIS_URL,
        # Every instance and worker of one deployment shares the prefix of its Redis names.
        "REDIS_KEY_PREFIX": prefix,
        "REDIS_SOCKET_TIMEOUT_MS": "1000",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "BCRYPT_ROUNDS": "4",
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMIT_CREATE_TASK": f"{CREATE_TASK_LIMIT}/hour",
        "RATE_LIMIT_REGISTER": "1000/hour",
        "RATE_LIMIT_LOGIN": "1000/minute",
        "RATE_LIMIT_LOGIN_USERNAME": "1000/minute",
        "RATE_LIMIT_DEFAULT": "1000/minute",
        "NOTIFIER": "smtp",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(inbox.port),
        "SMTP_FROM": SENDER,
        "SMTP_STARTTLS": "false",
        "SMTP_TIMEOUT_SECONDS": "30",
        "JOB_TIMEOUT_SECONDS": str(JOB_TIMEOUT_SECONDS),
        "OUTBOX_SWEEP_SECONDS": "0.5",
        "METRICS_TOKEN": METRICS_TOKEN,
        **s3_server.environment(bucket),
        # Downloads stream through the API; the presigning instances set it for themselves.
        "S3_PRESIGN_SECONDS": "",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "text",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    engine = create_engine(database_url)
    running = Cluster(env=env, directory=directory, engine=engine, s3=s3_server)
    try:
        running.start_api("a")
        running.start_api("b")
        running.start_worker()
        yield running
    finally:
        running.stop()
        engine.dispose()


@pytest.fixture
def running(cluster: Cluster, inbox: GatedInbox) -> Iterator[Cluster]:
    """The cluster with both instances and a worker up, and the inbox open, for each test."""
    inbox.hold.clear()
    for name in ("a", "b"):
        if name not in cluster.apis:
            cluster.start_api(name)
    if not cluster.workers:
        cluster.start_worker()
    yield cluster
    inbox.hold.clear()
    wait_until(cluster.quiet, "every job to be done after the test")


def user(cluster: Cluster) -> Client:
    return Client(cluster, f"u{uuid.uuid4().hex[:10]}")


def scrape(cluster: Cluster, instance: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(
        f"{cluster.url(instance)}/metrics",
        headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


# --- the tests ------------------------------------------------------------------------------


def test_a_completion_through_one_instance_sends_exactly_one_notice(
    running: Cluster, inbox: GatedInbox
) -> None:
    alice = user(running).register(on="a", login_on="b")
    first = alice.create_task("a", "Written on a")
    second = alice.create_task("b", "Written on b")
    alice.complete("b", first)
    wait_until(lambda: len(inbox.to(alice.email)) == 1, "the notice")
    # Completed again through the other instance, and in bulk with another: one more notice.
    alice.complete("a", first)
    response = alice.call(
        "a",
        "PATCH",
        "/tasks/bulk",
        json={"task_ids": [first, second], "updates": {"completed": True}},
    )
    assert response.status_code == 200, response.text
    wait_until(running.quiet, "every job to be done")
    subjects = sorted(message["Subject"] for message in inbox.to(alice.email))
    assert subjects == ["Task completed: Written on a", "Task completed: Written on b"]
    # The workers' notices count in every instance's metrics.
    for instance in ("a", "b"):
        assert scrape(running, instance)[("taskmanager_notices_sent_total", frozenset())] == 2


def test_rate_limits_and_the_stats_cache_are_shared(running: Cluster) -> None:
    bob = user(running).register(on="b", login_on="a")
    task_ids = [bob.create_task("ab"[n % 2], f"Task {n}") for n in range(CREATE_TASK_LIMIT)]
    for instance in ("a", "b"):
        response = bob.call(instance, "POST", "/tasks", json={"title": "One too many"})
        assert response.status_code == 429, response.text
        assert response.json()["code"] == "rate_limited"

    def stats(instance: str) -> tuple[str, int]:
        response = bob.call(instance, "GET", "/tasks/stats")
        assert response.status_code == 200, response.text
        return response.headers["X-Cache"], response.json()["completed"]

    assert stats("a") == ("MISS", 0)
    assert stats("b") == ("HIT", 0)
    bob.complete("b", task_ids[0])
    # The write through b made a's next answer a fresh one.
    assert stats("a") == ("MISS", 1)
    assert stats("b") == ("HIT", 1)


def test_a_list_total_counted_by_one_instance_is_exact_after_a_write_through_another(
    running: Cluster,
) -> None:
    """Each instance keeps the totals it counted, each with the change counter it was counted
    at: a write through another instance raises the counter, so the total is counted again."""
    carol = user(running).register(on="a", login_on="b")
    first = carol.create_task("a", "First")

    def total(instance: str) -> str:
        response = carol.call(instance, "GET", "/tasks", params={"limit": 1})
        assert response.status_code == 200, response.text
        return response.headers["X-Total-Count"]

    assert (total("a"), total("a"), total("b")) == ("1", "1", "1")
    carol.create_task("b", "Second")
    assert (total("a"), total("b")) == ("2", "2")
    assert carol.call("b", "DELETE", f"/tasks/{first}").status_code == 204
    assert (total("a"), total("b")) == ("1", "1")


def test_an_instance_killed_right_after_a_2xx_still_gets_its_notice_delivered(
    running: Cluster, inbox: GatedInbox
) -> None:
    carol = user(running).register(on="a", login_on="a")
    task_id = carol.create_task("a", "Finish before the crash")
    # No worker: the job can only be where the committed change left it.
    running.kill_workers()
    carol.complete("a", task_id)
    running.kill_api("a")
    assert inbox.to(carol.email) == []
    assert running.jobs_not_done() == 1
    running.start_api("a")
    running.start_worker()
    wait_until(lambda: len(inbox.to(carol.email)) == 1, "the notice")
    wait_until(running.quiet, "every job to be done")
    assert len(inbox.to(carol.email)) == 1
    assert carol.call("a", "GET", f"/tasks/{task_id}").json()["completed"] is True


def test_a_redis_flush_with_jobs_queued_loses_nothing(running: Cluster, inbox: GatedInbox) -> None:
    dave = user(running).register(on="a", login_on="b")
    running.kill_workers()
    task_ids = [dave.create_task("a", f"Queued {n}") for n in range(3)]
    for n, task_id in enumerate(task_ids):
        dave.complete("ab"[n % 2], task_id)
    assert running.queued() == 3
    with redis.Redis.from_url(TEST_REDIS_URL) as client:
        client.flushdb()
    assert running.queued() == 0
    running.start_worker()
    wait_until(running.quiet, "every job to be done")
    subjects = sorted(message["Subject"] for message in inbox.to(dave.email))
    assert subjects == [f"Task completed: Queued {n}" for n in range(3)]


def test_a_worker_killed_in_the_middle_of_a_job_loses_nothing(
    running: Cluster, inbox: GatedInbox
) -> None:
    erin = user(running).register(on="b", login_on="b")
    task_id = erin.create_task("b", "Sent twice? Never")
    inbox.hold.set()
    inbox.held.clear()
    erin.complete("b", task_id)
    wait_until(inbox.held.is_set, "the worker to be sending the notice")
    running.kill_workers()
    inbox.hold.clear()
    assert inbox.to(erin.email) == []
    running.start_worker()
    # Once the dead run's lease expires, the sweep enqueues the job again.
    wait_until(running.quiet, "every job to be done")
    assert len(inbox.to(erin.email)) == 1
    assert running.attempts()[-1] == 2


@pytest.fixture
def presigning(running: Cluster) -> Iterator[Cluster]:
    """Instances `c` and `d` too, both with S3_PRESIGN_SECONDS: their downloads are redirects."""
    for name in ("c", "d"):
        running.start_api(name, S3_PRESIGN_SECONDS=str(PRESIGN_SECONDS))
    yield running
    for name in ("c", "d"):
        running.kill_api(name)


def test_a_file_uploaded_through_one_instance_downloads_through_the_other(
    running: Cluster,
) -> None:
    frank = user(running).register(on="a", login_on="b")
    task_id = frank.create_task("a", "Attachments")
    digest = hashlib.sha256(ATTACHMENT).hexdigest()
    for up, down in (("a", "b"), ("b", "a")):
        file_id = frank.upload(up, task_id, f"from {up}.pdf")
        assert running.in_bucket(running.key_of(file_id)) == ATTACHMENT
        response = frank.call(down, "GET", f"/files/{file_id}")
        assert response.status_code == 200, response.text
        assert hashlib.sha256(response.content).hexdigest() == digest
        assert response.headers["etag"] == f'"{digest}"'
        assert response.headers["content-type"] == "application/pdf"
        assert response.headers["content-disposition"] == content_disposition(f"from {up}.pdf")
        # The tag one instance gave validates a cached copy at the other.
        revalidated = frank.call(
            up, "GET", f"/files/{file_id}", headers={"If-None-Match": response.headers["etag"]}
        )
        assert revalidated.status_code == 304

    def names(on: str) -> list[str]:
        response = frank.call(on, "GET", f"/tasks/{task_id}/files")
        return [item["original_filename"] for item in response.json()]

    assert names("a") == names("b") == ["from a.pdf", "from b.pdf"]
    # The bytes went through the bucket: no process kept them in its own folder.
    assert running.uploaded_files() == []


@pytest.mark.parametrize("deleted", ["file", "task"])
def test_a_file_deleted_through_one_instance_is_gone_through_the_other_and_from_the_bucket(
    running: Cluster, deleted: str
) -> None:
    grace = user(running).register(on="b", login_on="a")
    task_id = grace.create_task("b", "Short-lived")
    file_id = grace.upload("b", task_id, "gone.pdf")
    key = running.key_of(file_id)
    assert grace.call("a", "GET", f"/files/{file_id}").content == ATTACHMENT
    # No worker: the bytes stay until the job recorded with the deletion runs.
    running.kill_workers()
    path = f"/files/{file_id}" if deleted == "file" else f"/tasks/{task_id}"
    assert grace.call("a", "DELETE", path).status_code == 204
    response = grace.call("b", "GET", f"/files/{file_id}")
    assert response.status_code == 404
    assert response.json()["code"] == "file_not_found"
    assert grace.call("b", "DELETE", f"/files/{file_id}").status_code == 404
    assert running.in_bucket(key) == ATTACHMENT
    running.start_worker()
    wait_until(running.quiet, "the removal job to be done")
    assert running.in_bucket(key) is None


def test_a_presigned_download_through_another_instance_redirects_to_the_bytes(
    presigning: Cluster,
) -> None:
    heidi = user(presigning).register(on="c", login_on="d")
    task_id = heidi.create_task("c", "Presigned")
    file_id = heidi.upload("c", task_id, "signed.pdf")
    response = heidi.call("d", "GET", f"/files/{file_id}")
    assert response.status_code == 302, response.text
    assert response.headers["cache-control"] == "no-store"
    location = response.headers["location"]
    assert location.startswith(f"{presigning.s3.endpoint_url}/{presigning.bucket}/")
    assert f"X-Amz-Expires={PRESIGN_SECONDS}" in location
    # The URL is the credential: a plain client, without the API's token, follows it.
    fetched = httpx.get(location, timeout=30)
    assert fetched.status_code == 200
    assert hashlib.sha256(fetched.content).hexdigest() == hashlib.sha256(ATTACHMENT).hexdigest()
    assert fetched.headers["content-type"] == "application/pdf"
    assert fetched.headers["content-disposition"] == content_disposition("signed.pdf")
    # Deleted through the other instance: once the job ran, the URL handed out serves nothing.
    assert heidi.call("c", "DELETE", f"/files/{file_id}").status_code == 204
    assert heidi.call("d", "GET", f"/files/{file_id}").status_code == 404
    wait_until(presigning.quiet, "the removal job to be done")
    refused = httpx.get(location, timeout=30)
    assert refused.status_code == 404
    assert ATTACHMENT not in refused.content
