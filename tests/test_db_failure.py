"""Database outages: 503 service_unavailable with Retry-After, quickly; served again at once."""

import socket
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

import db_config
from config import Settings
from dependencies import DbSession
from main import create_app
from tests.conftest import BACKEND, PASSWORD, RESOURCES, TEST_DATABASE_URL, AuthUser
from tests.tcp_proxy import TcpProxy


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _assert_unavailable(response: object) -> None:
    from httpx import Response

    assert isinstance(response, Response)
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == "service_unavailable"
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert int(response.headers["Retry-After"]) >= 1
    assert "Traceback" not in response.text
    assert "SELECT" not in response.text


def _use_engine(engine: Engine) -> None:
    # The per-test fixture rebinds the sessions to the test connection afterwards.
    RESOURCES.sessions.configure(bind=engine)


def test_database_down_from_the_start_is_a_503_not_a_500(
    client: TestClient, alice: AuthUser
) -> None:
    settings = Settings(
        database_url=f"postgresql://postgres@127.0.0.1:{_closed_port()}/down",
        db_connect_timeout_seconds=1,
    )
    engine = db_config.build_engine(settings)
    _use_engine(engine)
    try:
        _assert_unavailable(client.get("/tasks", headers=alice.headers))
        _assert_unavailable(client.post("/auth/login", json={"username": "a", "password": "b"}))
        _assert_unavailable(client.post("/tasks", json={"title": "t"}, headers=alice.headers))
    finally:
        engine.dispose()


@pytest.fixture
def proxied_database() -> Iterator[tuple[TcpProxy, Engine]]:
    """The app's sessions reach the real PostgreSQL through a proxy the test can cut."""
    target = urlsplit(TEST_DATABASE_URL)
    with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        url = TEST_DATABASE_URL.replace(target.netloc.split("@")[-1], f"127.0.0.1:{proxy.port}", 1)
        engine = db_config.build_engine(
            Settings(database_url=url, db_connect_timeout_seconds=1, db_pool_size=2)
        )
        _use_engine(engine)
        try:
            yield proxy, engine
        finally:
            engine.dispose()


@pytest.mark.postgres_redis
@pytest.mark.skipif(
    BACKEND == "embedded", reason="SQLite cannot go down; the production pass runs it"
)
def test_postgresql_outage_is_503_with_retry_after_and_served_right_after(
    client: TestClient, proxied_database: tuple[TcpProxy, Engine]
) -> None:
    proxy, engine = proxied_database
    # Outside the per-test transaction (another connection): committed for real, removed below.
    username = f"outage-{uuid.uuid4().hex[:12]}"
    body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
    try:
        assert client.post("/auth/register", json=body).status_code == 201
        login = client.post("/auth/login", json={"username": username, "password": PASSWORD})
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        assert client.get("/tasks", headers=headers).status_code == 200

        proxy.close()  # PostgreSQL is gone; the pooled connections are dead
        _assert_unavailable(client.get("/tasks", headers=headers))
        _assert_unavailable(client.post("/tasks", json={"title": "lost"}, headers=headers))
        assert client.get("/health/ready").status_code == 503

        proxy.blackhole()  # a host that accepts and never answers: the connect timeout decides
        started = time.monotonic()
        _assert_unavailable(client.get("/tasks", headers=headers))
        assert time.monotonic() - started < 10  # DB_CONNECT_TIMEOUT_SECONDS=1, not a hang

        proxy.reopen()
        response = client.get("/tasks", headers=headers)  # the very first request after
        assert response.status_code == 200, response.text
        assert client.post("/tasks", json={"title": "back"}, headers=headers).status_code == 201
    finally:
        proxy.reopen()
        engine.dispose()  # reopening cut the pooled connections
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM users WHERE username = :u"), {"u": username})


@pytest.mark.postgres_redis
@pytest.mark.skipif(BACKEND == "embedded", reason="statement_timeout is PostgreSQL's")
def test_a_statement_over_the_timeout_is_cut_off_with_a_503() -> None:
    engine = db_config.build_engine(
        Settings(database_url=TEST_DATABASE_URL, db_statement_timeout_ms=200)
    )
    _use_engine(engine)
    slow = create_app(Settings(database_url=TEST_DATABASE_URL), resources=RESOURCES)

    @slow.get("/slow")
    def slow_query(session: DbSession) -> None:
        session.execute(text("SELECT pg_sleep(30)"))

    try:
        started = time.monotonic()
        _assert_unavailable(TestClient(slow).get("/slow"))
        assert time.monotonic() - started < 10  # cut at 200 ms, not after 30 s
    finally:
        engine.dispose()
