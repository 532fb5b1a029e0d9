"""An app uses what its lifespan built from its own settings: database, storage, jobs."""

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.pool import QueuePool

import notifications
from alembic import command
from config import Settings, get_settings
from jobs import InProcessRunner, RqRunner
from main import create_app
from metrics import RedisEventCounters, build_event_counters
from redis_config import RedisCache, build_cache
from resources import Resources
from tests.conftest import RESOURCES, alembic_config, register_and_login


@pytest.fixture
def own_settings(tmp_path: Path) -> Settings:
    """Settings of an app of its own: its own SQLite database and upload directory, no Redis."""
    settings = get_settings().model_copy(
        update={
            "database_url": f"sqlite:///{tmp_path / 'own.db'}",
            "redis_url": None,
            "upload_dir": tmp_path / "own-uploads",
        }
    )
    resources = Resources(settings)
    try:
        with resources.engine.begin() as connection:
            command.upgrade(alembic_config(connection), "head")
    finally:
        resources.close()
    return settings


@pytest.fixture
def own_client(own_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(own_settings)) as client:
        yield client


def _files_under(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())


def test_an_app_keeps_and_deletes_uploads_in_its_own_upload_dir(
    own_client: TestClient, own_settings: Settings
) -> None:
    own_dir = own_settings.upload_dir
    shared_dir = get_settings().upload_dir
    shared_before = _files_under(shared_dir) if shared_dir.exists() else []
    user = register_and_login(own_client, "owner")
    task = own_client.post("/tasks", json={"title": "with a file"}, headers=user.headers).json()

    response = own_client.post(
        f"/tasks/{task['id']}/files",
        files={"file": ("notes.txt", b"my own notes", "text/plain")},
        headers=user.headers,
    )
    assert response.status_code == 201, response.text
    [stored] = _files_under(own_dir)
    assert stored.read_bytes() == b"my own notes"

    response = own_client.delete(f"/files/{response.json()['id']}", headers=user.headers)
    assert response.status_code == 204
    runner = own_client.app.state.resources.runner  # type: ignore[attr-defined]
    assert isinstance(runner, InProcessRunner)
    assert runner.wait_idle(30)
    assert _files_under(own_dir) == []
    # Nothing went through the process's other storage (the test suite's own app).
    assert (_files_under(shared_dir) if shared_dir.exists() else []) == shared_before


def test_the_lifespan_builds_what_the_app_uses_and_closes_it(own_settings: Settings) -> None:
    app = create_app(own_settings)
    with TestClient(app) as client:
        resources = app.state.resources
        assert resources is not RESOURCES
        assert resources.settings is own_settings
        assert resources.engine.url.database == own_settings.database_url.split("///", 1)[1]
        assert resources.storage.temp_dir.is_relative_to(own_settings.upload_dir)
        assert client.get("/health/ready").json()["checks"] == {
            "database": "ok",
            "cache": "disabled",
        }
    # Stopped with the app: its runner is gone, its pool holds no connection.
    assert resources.runner is None
    assert resources.engine.pool.checkedout() == 0


def test_a_running_app_keeps_what_it_built_out_of_garbage_collections(
    own_settings: Settings,
) -> None:
    # Full collections walking every long-lived object were the slowest requests' pauses.
    app = create_app(own_settings)
    before = gc.get_freeze_count()
    with TestClient(app) as client:
        assert gc.get_freeze_count() > before
        assert client.get("/health").status_code == 200
    assert gc.get_freeze_count() == 0


def test_every_redis_client_of_an_app_takes_its_redis_timeout() -> None:
    """REDIS_SOCKET_TIMEOUT_MS bounds connecting and each call of every Redis client the app
    builds: rate-limit counters and notice budget as well as cache, job queue and counters."""
    settings = get_settings().model_copy(
        update={
            # Nothing listens there: building a client does not connect.
            "redis_url": "redis://127.0.0.1:1/0",
            "redis_socket_timeout_ms": 1234,
            "rate_limit_enabled": True,
        }
    )
    app = create_app(settings)
    cache, counters = build_cache(settings), build_event_counters(settings)
    assert isinstance(cache, RedisCache)
    assert isinstance(counters, RedisEventCounters)
    budget = notifications.notice_budget(app.state.settings)._client
    assert budget is not None
    clients: dict[str, redis.Redis] = {
        # slowapi's limits storage holds the client it made from the limiter's options.
        "rate limiter": app.state.limiter.limiter._storage.storage,
        "notice budget": budget,
        "cache": cache._client,
        "job queue": RqRunner(settings).connection,
        "job counters": counters._client,
    }
    try:
        timeouts = {
            name: (
                client.connection_pool.connection_kwargs["socket_timeout"],
                client.connection_pool.connection_kwargs["socket_connect_timeout"],
            )
            for name, client in clients.items()
        }
        assert timeouts == dict.fromkeys(clients, (1.234, 1.234))
    finally:
        for client in clients.values():
            client.close()


@pytest.mark.parametrize(
    ("pool_size", "async_reads", "expected"),
    [(20, True, (10, 10)), (5, True, (3, 2)), (1, True, (1, 1)), (20, False, (20, None))],
)
def test_a_worker_shares_its_pool_size_between_the_two_drivers(
    pool_size: int, async_reads: bool, expected: tuple[int, int | None]
) -> None:
    # Nothing connects: the engines are only built.
    settings = Settings(
        database_url="postgresql://nobody@127.0.0.1:1/none",
        db_pool_size=pool_size,
        db_async_reads=async_reads,
    )
    resources = Resources(settings)
    try:
        pools = [resources.engine.pool]
        if resources.async_engine is not None:
            pools.append(resources.async_engine.sync_engine.pool)
        assert all(isinstance(pool, QueuePool) for pool in pools)
        sizes = [cast(QueuePool, pool).size() for pool in pools]
        assert tuple(sizes) + (None,) * (2 - len(sizes)) == expected
    finally:
        resources.close()
