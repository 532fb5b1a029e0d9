"""Health probes: liveness, and readiness of the database and Redis."""

import socket
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

import db_config
from config import Settings
from redis_config import RedisCache
from tests.conftest import BACKEND, RESOURCES


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def database_down() -> Iterator[None]:
    """Every session the app opens points at a PostgreSQL that is not there."""
    settings = Settings(
        database_url=f"postgresql://postgres@127.0.0.1:{_closed_port()}/down",
        db_connect_timeout_seconds=1,
    )
    engine = db_config.build_engine(settings)
    RESOURCES.sessions.configure(bind=engine)
    try:
        yield
    finally:
        engine.dispose()  # the per-test fixture rebinds the sessions


# --- GET /health ---------------------------------------------------------------------------


def test_liveness_needs_no_token(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.usefixtures("database_down")
def test_liveness_does_not_depend_on_the_database(client: TestClient) -> None:
    assert client.get("/health").status_code == 200


# --- GET /health/ready ---------------------------------------------------------------------


def test_ready_when_database_and_cache_answer(client: TestClient) -> None:
    response = client.get("/health/ready")
    assert response.status_code == 200
    expected_cache = "disabled" if BACKEND == "embedded" else "ok"
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "cache": expected_cache},
    }


def test_degraded_but_serving_when_only_redis_is_down(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Readiness pings the Redis client the app's cache uses, not one of its own.
    down = RedisCache(
        f"redis://127.0.0.1:{_closed_port()}/0", key_prefix="down", timeout_seconds=0.05
    )
    monkeypatch.setattr(RESOURCES, "cache", down)
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "degraded", "checks": {"database": "ok", "cache": "error"}}


@pytest.mark.usefixtures("database_down")
def test_unavailable_with_503_when_the_database_does_not_answer(client: TestClient) -> None:
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["checks"]["database"] == "error"
