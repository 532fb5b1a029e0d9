"""GET /metrics: Prometheus text behind METRICS_TOKEN; requests, latencies, jobs and notices."""

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr, ValidationError
from sqlalchemy import Connection

import jobs
import metrics
from config import PROJECT_DIR, Settings
from main import create_app
from tests.conftest import RESOURCES, AuthUser, register_and_login, verified
from tests.job_helpers import HeldJobs
from tests.served_app import free_port
from tests.task_helpers import create_task

TOKEN = "metrics-token-for-the-tests-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# Tests that serve the app in another process commit their jobs to the shared database.
pytestmark = pytest.mark.usefixtures("empty_outbox")


@pytest.fixture
def alice(client: TestClient, db_connection: Connection) -> AuthUser:
    """Alice with a verified address, so her completions send notices."""
    return verified(register_and_login(client, "alice"), db_connection)


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def metrics_app() -> FastAPI:
    return create_app(Settings(metrics_token=SecretStr(TOKEN)), resources=RESOURCES)


@pytest.fixture
def metrics_client(metrics_app: FastAPI) -> TestClient:
    return TestClient(metrics_app)


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics", headers=BEARER)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)


class TestAccess:
    def test_without_a_token_configured_there_is_no_metrics_endpoint(
        self, client: TestClient
    ) -> None:
        for headers in ({}, BEARER):
            response = client.get("/metrics", headers=headers)
            assert response.status_code == 404
            assert response.json()["code"] == "not_found"

    @pytest.mark.parametrize(
        ("headers", "code"),
        [
            ({}, "not_authenticated"),
            ({"Authorization": f"Basic {TOKEN}"}, "not_authenticated"),
            ({"Authorization": "Bearer "}, "not_authenticated"),
            ({"Authorization": "Bearer wrong-token-wrong-token"}, "invalid_token"),
            ({"Authorization": f"Bearer {TOKEN}x"}, "invalid_token"),
        ],
        ids=["missing", "other-scheme", "empty", "wrong", "longer"],
    )
    def test_a_missing_or_wrong_token_is_401(
        self, metrics_client: TestClient, headers: dict[str, str], code: str
    ) -> None:
        response = metrics_client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == code
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert TOKEN not in response.text

    def test_a_user_token_is_not_a_metrics_token(
        self, metrics_client: TestClient, alice: AuthUser
    ) -> None:
        response = metrics_client.get("/metrics", headers=alice.headers)
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_token"

    def test_a_short_token_is_refused_at_start(self) -> None:
        with pytest.raises(ValidationError, match="METRICS_TOKEN"):
            Settings(metrics_token=SecretStr("short"))
        assert Settings.model_validate({"metrics_token": "  "}).metrics_token is None

    def test_requests_are_counted_only_when_metrics_are_on(self, app: FastAPI) -> None:
        assert all(m.cls is not metrics.MetricsMiddleware for m in app.user_middleware)  # type: ignore[comparison-overlap]


class TestRequestMetrics:
    def test_by_route_template_and_status_with_latencies(
        self, metrics_client: TestClient, client: TestClient, alice: AuthUser
    ) -> None:
        task_id = create_task(client, alice)["id"]
        before = scrape(metrics_client)
        route = {"method": "GET", "route": "/tasks/{task_id}"}
        for path in (f"/tasks/{task_id}", "/tasks/2147483000", "/tasks/2147483001"):
            metrics_client.get(path, headers=alice.headers)
        metrics_client.get("/no/such/place")
        after = scrape(metrics_client)

        def grew(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        requests = "taskmanager_http_requests_total"
        assert grew(requests, **route, status="200") == 1
        assert grew(requests, **route, status="404") == 2
        assert grew(requests, method="GET", route="unmatched", status="404") == 1
        assert grew("taskmanager_http_request_duration_seconds_count", **route) == 3
        assert grew("taskmanager_http_request_duration_seconds_bucket", **route, le="+Inf") == 3
        # Labels are templates: no id, no unknown path becomes a series of its own.
        assert not any("2147483000" in str(key) or "/no/such" in str(key) for key in after)


class TestJobMetrics:
    def test_queue_depth_and_notices_sent(
        self,
        metrics_client: TestClient,
        client: TestClient,
        alice: AuthUser,
        held_jobs: HeldJobs,
    ) -> None:
        sent_before = value(scrape(metrics_client), "taskmanager_notices_sent_total")
        task_id = create_task(client, alice)["id"]
        client.patch(f"/tasks/{task_id}", json={"completed": True}, headers=alice.headers)
        found = scrape(metrics_client)
        assert value(found, "taskmanager_jobs_pending", kind="task_completed") == 1
        assert value(found, "taskmanager_job_queue_length") == 1
        [job_id] = held_jobs.take()
        jobs.run_job(RESOURCES, job_id)
        found = scrape(metrics_client)
        assert value(found, "taskmanager_jobs_pending", kind="task_completed") == 0
        assert value(found, "taskmanager_job_queue_length") == 0
        assert value(found, "taskmanager_notices_sent_total") == sent_before + 1

    def test_job_failures_and_dropped_notices(self, metrics_client: TestClient) -> None:
        before = scrape(metrics_client)
        RESOURCES.events.count("job_failures", kind="remove_stored_files")
        RESOURCES.events.count("notices_dropped", 2, reason="refused")
        after = scrape(metrics_client)
        for name, labels, added in (
            ("taskmanager_job_failures_total", {"kind": "remove_stored_files"}, 1),
            ("taskmanager_notices_dropped_total", {"reason": "refused"}, 2),
        ):
            assert value(after, name, **labels) - value(before, name, **labels) == added


# --- several worker processes (make serve) --------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`scripts/serve.sh` with two workers on a fresh SQLite file; yields its URL and metrics dir."""
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # A file a previous run left: serve.sh must not add it to this run's totals.
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'served.db'}",
        "REDIS_URL": "",
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "METRICS_TOKEN": TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "WORKERS": "2",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [str(PROJECT_DIR / "scripts" / "serve.sh")],
        cwd=PROJECT_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, "serve.sh exited"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve.sh did not start"
            time.sleep(0.2)
        yield url, metrics_dir
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_make_serve_merges_the_metrics_of_its_workers(served: tuple[str, Path]) -> None:
    url, metrics_dir = served
    # Each on a new connection, so that both workers answer some of them.
    health = [httpx.get(f"{url}/health", timeout=10).status_code for _ in range(30)]
    assert set(health) == {200}
    totals = set()
    for _ in range(4):
        response = httpx.get(f"{url}/metrics", headers=BEARER, timeout=10)
        assert response.status_code == 200
        found = samples(response.text)
        totals.add(
            value(
                found,
                "taskmanager_http_requests_total",
                method="GET",
                route="/health",
                status="200",
            )
        )
    # Whichever worker answers, it reports every worker's requests: these and the one
    # successful probe of the fixture (refused connections reach no worker).
    assert totals == {31}
    files = {path.name for path in metrics_dir.iterdir()}
    assert "counter_999999.db" not in files
    assert any(name.startswith("counter_") for name in files)
