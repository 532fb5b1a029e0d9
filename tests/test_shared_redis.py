"""Two deployments on one Redis database: neither sees the other's cache, counters or job queue.

Each deployment is a real `uvicorn` process with a database of its own; both share one Redis
database (a `redis-server` this test starts), as two installations pointed at one Redis would.
Runs in both passes: it needs only the redis-server binary.
"""

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from config import PROJECT_DIR, derived_redis_key_prefix
from tests.conftest import PASSWORD
from tests.process_helpers import RedisServer, needs_redis_server
from tests.served_app import free_port, stop_process

pytestmark = needs_redis_server


class Deployment:
    """`uvicorn main:app` on its own SQLite database and port, migrated first."""

    def __init__(self, name: str, directory: Path, redis_url: str) -> None:
        self.name = name
        self.database_url = f"sqlite:///{directory / f'{name}.db'}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / f"{name}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TEST_")},
            "DATABASE_URL": self.database_url,
            "REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": "",  # derived from the database, as by default
            "SECRET_KEY": secrets.token_urlsafe(48),
            "BCRYPT_ROUNDS": "4",
            "RATE_LIMIT_ENABLED": "true",
            "RATE_LIMIT_REGISTER": "3/hour",
            "UPLOAD_DIR": str(directory / f"{name}-uploads"),
            "LOG_FILE": "",
            "LOG_LEVEL": "WARNING",
            "NOTIFIER": "log",
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def key_prefix(self) -> str:
        return derived_redis_key_prefix(self.database_url)

    def migrate(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=PROJECT_DIR,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "uvicorn", "main:app",
                    "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log",
                ],
                cwd=PROJECT_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process(self.process)

    def register(self, username: str) -> httpx.Response:
        return httpx.post(
            f"{self.url}/auth/register",
            json={"username": username, "email": f"{username}@example.com", "password": PASSWORD},
        )

    def login(self, username: str) -> dict[str, str]:
        response = httpx.post(
            f"{self.url}/auth/login", json={"username": username, "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    def call(self, method: str, path: str, headers: dict[str, str], **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.url}{path}", headers=headers, **kwargs)
        assert response.status_code < 300, response.text
        return response


@pytest.fixture
def deployments(tmp_path: Path) -> Iterator[tuple[Deployment, Deployment, str]]:
    server = RedisServer(tmp_path)
    server.start()
    pair = (Deployment("a", tmp_path, server.url), Deployment("b", tmp_path, server.url))
    try:
        migrations = [deployment.migrate() for deployment in pair]
        assert [migration.wait(timeout=120) for migration in migrations] == [0, 0]
        for deployment in pair:
            deployment.start()
        for deployment in pair:
            deployment.wait_until_up()
        yield pair[0], pair[1], server.url
    finally:
        for deployment in pair:
            deployment.stop()
        server.stop()


def test_two_deployments_on_one_redis_see_neither_each_others_stats_nor_counters(
    deployments: tuple[Deployment, Deployment, str],
) -> None:
    a, b, redis_url = deployments
    assert a.key_prefix != b.key_prefix
    # The same user id in both databases: user 1 of A and user 1 of B.
    assert a.register("alice").json()["id"] == b.register("alice").json()["id"]
    alice_a, alice_b = a.login("alice"), b.login("alice")
    b.call("POST", "/tasks", alice_b, json={"title": "only in B"})
    for title in ("first in A", "second in A"):
        a.call("POST", "/tasks", alice_a, json={"title": title})
    a_stats = a.call("GET", "/tasks/stats", alice_a)
    assert (a_stats.json()["total"], a_stats.headers["X-Cache"]) == (2, "MISS")
    assert a.call("GET", "/tasks/stats", alice_a).headers["X-Cache"] == "HIT"
    # B computes its own answer: A's cached entry (and A's version counter) are not B's.
    b_stats = b.call("GET", "/tasks/stats", alice_b)
    assert (b_stats.json()["total"], b_stats.headers["X-Cache"]) == (1, "MISS")
    # Completing a task in each queues its notice job on each deployment's own queue.
    b_task = b.call("GET", "/tasks", alice_b).json()[0]["id"]
    b.call("PATCH", f"/tasks/{b_task}", alice_b, json={"completed": True})
    a_task = a.call("GET", "/tasks", alice_a).json()[0]["id"]
    a.call("PATCH", f"/tasks/{a_task}", alice_a, json={"completed": True})

    # Registration budgets (3 per hour per client address) are counted per deployment.
    assert [a.register(f"user{n}").status_code for n in range(3)] == [201, 201, 429]
    assert [b.register(f"user{n}").status_code for n in range(3)] == [201, 201, 429]

    with redis.Redis.from_url(redis_url, decode_responses=True) as raw:
        keys = raw.keys("*")
        # RQ names its own keys `rq:…`; the queues in them are each deployment's own.
        for deployment in (a, b):
            assert raw.llen(f"rq:queue:{deployment.key_prefix}:jobs") == 1
    for deployment in (a, b):
        own = {key for key in keys if key.startswith(f"{deployment.key_prefix}:")}
        assert any(key.startswith(f"{deployment.key_prefix}:stats:") for key in own)
        assert any(key.startswith(f"{deployment.key_prefix}:limits:") for key in own)
    # Nothing outside the two namespaces but RQ's, whose queues carry the prefixes.
    assert {key.split(":", 1)[0] for key in keys} == {a.key_prefix, b.key_prefix, "rq"}
