"""Test configuration: the backend comes from the environment, never from editing tests.

With TEST_DATABASE_URL / TEST_REDIS_URL unset, tests run on the embedded default (a temporary
SQLite file, in-process cache). With them set, the same tests run on PostgreSQL + Redis.
"""

import contextlib
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.process_helpers import RedisServer

_TMP = Path(tempfile.mkdtemp(prefix="taskmanager-tests-"))
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "").strip()
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "").strip()
BACKEND = "postgresql+redis" if TEST_DATABASE_URL else "embedded"

# Settings for the app under test, set before any project module reads them.
os.environ.update(
    {
        "DATABASE_URL": TEST_DATABASE_URL or f"sqlite:///{_TMP / 'test.db'}",
        "REDIS_URL": TEST_REDIS_URL if TEST_DATABASE_URL else "",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "BCRYPT_ROUNDS": "4",
        "RATE_LIMIT_ENABLED": "false",
        "UPLOAD_DIR": str(_TMP / "uploads"),
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "text",
        "CORS_ORIGINS": "",
        # The app's cache gets a roomy timeout here: on a busy shared test machine Redis can
        # stall past the production 50 ms, which would turn an expected HIT into a MISS. The
        # tests of Redis failures build their caches with the production timeout themselves.
        "REDIS_SOCKET_TIMEOUT_MS": "1000",
    }
)

import config  # noqa: E402

# A developer's .env must not change what the tests run against.
config.Settings.model_config["env_file"] = None
config.get_settings.cache_clear()

from alembic.config import Config  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import Connection, text, update  # noqa: E402

import jobs  # noqa: E402
from alembic import command  # noqa: E402
from dependencies import get_app_settings  # noqa: E402
from main import create_app  # noqa: E402
from rate_limit_config import RateLimiter  # noqa: E402
from resources import Resources  # noqa: E402
from tests.job_helpers import HeldJobs, RunAtOnce  # noqa: E402

PROJECT_DIR = config.PROJECT_DIR

# Fixtures shared by the files that need a real SMTP server (`inbox`, `use_settings`).
pytest_plugins = ["tests.mail_helpers"]

# What the app under test uses (engine, sessions, cache, storage, runner): built once from the
# test settings and lent to every app the tests build with `create_app(resources=RESOURCES)`,
# so that their sessions join each test's rolled-back transaction (see `db_connection`).
RESOURCES = Resources(config.get_settings())
# Jobs run before the committing call returns (see `_jobs_run_at_once`). Set at once, so that an
# app whose lifespan starts early (while tests are collected) never builds a runner of its own.
RUN_AT_ONCE = RunAtOnce.for_resources(RESOURCES)
RESOURCES.runner = RUN_AT_ONCE


def pytest_report_header() -> str:
    return f"backend: {BACKEND} ({RESOURCES.engine.url.render_as_string(hide_password=True)})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked postgres_redis belong to the production pass: deselect them elsewhere."""
    if BACKEND != "embedded":
        return
    production_only = [item for item in items if item.get_closest_marker("postgres_redis")]
    if production_only:
        config.hook.pytest_deselected(items=production_only)
        items[:] = [item for item in items if not item.get_closest_marker("postgres_redis")]


def alembic_config(connection: Connection) -> Config:
    cfg = Config(str(PROJECT_DIR / "alembic.ini"))
    cfg.attributes["connection"] = connection
    cfg.attributes["configure_logger"] = False
    return cfg


def reset_database(connection: Connection) -> None:
    """Leave the test database empty: no tables, no alembic version."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    else:
        tables = connection.execute(
            text("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        ).scalars()
        connection.execute(text("PRAGMA foreign_keys=OFF"))
        for table in list(tables):
            connection.execute(text(f'DROP TABLE "{table}"'))
        connection.execute(text("PRAGMA foreign_keys=ON"))


@pytest.fixture(scope="session", autouse=True)
def _schema() -> Iterator[None]:
    """Build the schema once per run with the migrations (the only schema source)."""
    with RESOURCES.engine.begin() as connection:
        reset_database(connection)
        command.upgrade(alembic_config(connection), "head")
    yield
    RESOURCES.close()
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(autouse=True)
def db_connection() -> Iterator[Connection]:
    """Run each test inside one outer transaction that is rolled back afterwards.

    Every session the app opens (requests and background work) joins it through a
    savepoint, so app code may commit freely and nothing survives the test.
    """
    connection = RESOURCES.engine.connect()
    transaction = connection.begin()
    RESOURCES.sessions.configure(bind=connection, join_transaction_mode="create_savepoint")
    try:
        yield connection
    finally:
        RESOURCES.sessions.configure(
            bind=RESOURCES.engine, join_transaction_mode="conditional_savepoint"
        )
        if transaction.is_active:
            transaction.rollback()
        connection.close()


@pytest.fixture(scope="session", autouse=True)
def _jobs_run_at_once() -> Iterator[RunAtOnce]:
    """Jobs run before the committing call returns, so a test sees their effect at once.

    Embedded: on the real runner thread (the committing thread waits for it); production: on
    RQ, enqueued and run in the committing thread. Only one of them uses the test's single
    connection at any time. The periodic sweep is off; its tests run it themselves.
    """
    runner = RUN_AT_ONCE
    RESOURCES.runner = runner
    # RQ runs each job in the enqueuing thread here: with the test resources, as a worker would.
    jobs.serve_jobs_with(RESOURCES)
    runner.start_for_tests()
    try:
        yield runner
    finally:
        runner.stop_for_tests()
        jobs.serve_jobs_with(None)


@pytest.fixture
def held_jobs(_jobs_run_at_once: RunAtOnce) -> Iterator[HeldJobs]:
    """Committed jobs are only collected during the test (`held_jobs.take()` hands them out)."""
    held = HeldJobs()
    RESOURCES.runner = held
    try:
        yield held
    finally:
        RESOURCES.runner = _jobs_run_at_once


@pytest.fixture(scope="session")
def app() -> FastAPI:
    return create_app(resources=RESOURCES)


@pytest.fixture(scope="session")
def _client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


@pytest.fixture
def client(_client: TestClient, app: FastAPI) -> Iterator[TestClient]:
    yield _client
    app.dependency_overrides.clear()


@pytest.fixture
def settings_override(app: FastAPI) -> Callable[..., config.Settings]:
    """Run the app with some settings changed, e.g. `settings_override(require_if_match=True)`."""

    def apply(**changes: Any) -> config.Settings:
        settings = config.get_settings().model_copy(update=changes)
        app.dependency_overrides[get_app_settings] = lambda: settings
        return settings

    return apply


@dataclass
class AuthUser:
    id: int
    username: str
    email: str
    password: str
    token: str
    headers: dict[str, str] = field(default_factory=dict)


PASSWORD = "correct horse battery"


def register_and_login(client: TestClient, username: str, password: str = PASSWORD) -> AuthUser:
    """Register a user through the API and log in; returns its bearer headers."""
    email = f"{username}@example.com"
    response = client.post(
        "/auth/register", json={"username": username, "email": email, "password": password}
    )
    assert response.status_code == 201, response.text
    user_id = response.json()["id"]
    response = client.post("/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    return AuthUser(
        id=user_id,
        username=username,
        email=email,
        password=password,
        token=token,
        headers={"Authorization": f"Bearer {token}"},
    )


@pytest.fixture
def alice(client: TestClient) -> AuthUser:
    return register_and_login(client, "alice")


@pytest.fixture
def bob(client: TestClient) -> AuthUser:
    return register_and_login(client, "bob")


def verified(user: AuthUser, connection: Connection) -> AuthUser:
    """Mark the user's address verified: notices go to verified addresses only (the
    verification itself is tested in test_account)."""
    from db_models import User

    connection.execute(update(User).where(User.id == user.id).values(email_verified=True))
    return user


@pytest.fixture
def failing_commit(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Call to make every later commit fail after its statements ran: with `error`, or by
    default as a lost connection does. `monkeypatch.undo()` lets commits through again."""
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    def arm(error: Exception | None = None) -> None:
        def commit(self: Session) -> None:
            self.flush()
            raise error or OperationalError("COMMIT", {}, Exception("server closed the connection"))

        monkeypatch.setattr(Session, "commit", commit)

    return arm


@pytest.fixture
def empty_outbox(db_connection: Connection) -> None:
    """Start from an empty outbox (in this test's transaction, so it is rolled back too).

    Tests that serve the app in another process commit their jobs to the shared database.
    """
    from sqlalchemy import delete

    from db_models import OutboxJob

    db_connection.execute(delete(OutboxJob))


@pytest.fixture
def live_server(db_connection: Connection) -> Iterator[str]:
    """The app served by uvicorn on a free loopback port; yields its base URL.

    Its sessions join this test's rolled-back transaction like the TestClient's do, so
    nothing it writes survives the test. They share the test's one connection, so send
    requests one at a time (a browser clicking through the docs does).
    """
    import uvicorn

    from tests.served_app import serving

    config = uvicorn.Config(
        create_app(resources=RESOURCES),
        log_config=None,
        access_log=False,
        lifespan="on",
        loop="asyncio",
    )
    with serving(config, "live server") as url:
        yield url


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator["RedisServer"]:
    """A redis-server of this test's own on a free port (see `needs_redis_server`)."""
    # Imported here: importing it at the top would import tests.mail_helpers before pytest
    # registers it as a plugin, and its asserts would not be rewritten.
    from tests.process_helpers import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- apps of a test's own, with rate limits ---------------------------------------------------

AppFactory = Callable[..., FastAPI]


@contextlib.contextmanager
def apps_with_own_limits(**defaults: Any) -> Iterator[AppFactory]:
    """Build apps on the suite's resources with `defaults` and each call's settings.

    With rate limiting on, each app counts under a prefix of its own (`key_prefix=` shares
    one), so runs and tests never share a budget; their Redis keys go at the end.
    """
    prefixes: list[tuple[str, str]] = []

    def build(*, key_prefix: str | None = None, **overrides: Any) -> FastAPI:
        settings = config.Settings(**{**defaults, **overrides})
        app = create_app(settings, resources=RESOURCES)
        if settings.rate_limit_enabled:
            prefix = key_prefix or f"test-{uuid.uuid4().hex}"
            app.state.limiter = RateLimiter(settings, key_prefix=prefix)
            if settings.redis_url:
                prefixes.append((settings.redis_url, prefix))
        return app

    yield build
    for redis_url, prefix in prefixes:
        # Leftovers expire with their window anyway.
        with contextlib.suppress(redis.RedisError), redis.Redis.from_url(redis_url) as client:
            keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
            if keys:
                client.delete(*keys)


# --- the caches ------------------------------------------------------------------------

import redis  # noqa: E402

import redis_config  # noqa: E402


def _empty_the_cache() -> None:
    RESOURCES.list_totals.clear()
    cache = RESOURCES.cache
    if isinstance(cache, redis_config.MemoryCache):
        cache.clear()
    elif isinstance(cache, redis_config.RedisCache) and TEST_REDIS_URL:
        with redis.Redis.from_url(TEST_REDIS_URL) as client:
            client.flushdb()


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    """Start and end every test with an empty cache: user ids repeat once the database rolls back."""
    _empty_the_cache()
    yield
    _empty_the_cache()


@pytest.fixture
def swap_recent_users() -> Iterator[Callable[[object], None]]:
    """Give the apps another memory of recent tokens for one test (a fake clock, a TTL)."""
    original = RESOURCES.recent_users

    def swap(recent: object) -> None:
        RESOURCES.recent_users = recent  # type: ignore[assignment]

    yield swap
    RESOURCES.recent_users = original


@pytest.fixture(autouse=True)
def _forget_recent_users() -> Iterator[None]:
    """Each test starts with no remembered users (ids repeat once a test's rows roll back)."""
    RESOURCES.recent_users.clear()
    yield
    RESOURCES.recent_users.clear()


@pytest.fixture(autouse=True)
def _fresh_notice_budgets() -> Iterator[None]:
    """Each test starts with every user's notice budget unspent (the Redis ones go with flushdb)."""
    import notifications

    notifications.reset_notice_budgets()
    yield
    notifications.reset_notice_budgets()


# --- storage backends -----------------------------------------------------------------------

import storage  # noqa: E402
from tests.s3_server import S3Server, S3ServerError, start_s3_server  # noqa: E402

TEST_BUCKET = "taskmanager-tests"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3-compatible server with one bucket, for the whole run; fails, never skips."""
    try:
        server = start_s3_server(_TMP / "s3-data")
    except S3ServerError as exc:
        pytest.fail(str(exc))
    try:
        server.client().create_bucket(Bucket=TEST_BUCKET)
        yield server
    finally:
        server.stop()


def s3_storage_for(
    server: S3Server, *, presign_seconds: int | None = None, namespace: str | None = None
) -> storage.S3Storage:
    """An s3 storage on the test server, in this run's namespace unless told otherwise."""
    settings = config.get_settings()
    return storage.S3Storage(
        namespace=namespace or storage.database_namespace(settings.database_url),
        upload_dir=settings.upload_dir,
        bucket=TEST_BUCKET,
        client=server.client(),
        presign_seconds=presign_seconds,
    )


@pytest.fixture(scope="session")
def s3_storage(s3_server: S3Server) -> storage.S3Storage:
    return s3_storage_for(s3_server)


@pytest.fixture(params=["local", "s3"])
def storage_backend(request: pytest.FixtureRequest) -> Iterator[storage.Storage]:
    """Run the test once on each storage backend: the app and its background work use it.

    Swapped by hand rather than with `monkeypatch`, so a test's `monkeypatch.undo()` keeps it.
    """
    original = RESOURCES.storage
    chosen: storage.Storage = (
        request.getfixturevalue("s3_storage") if request.param == "s3" else original
    )
    RESOURCES.storage = chosen
    try:
        yield chosen
    finally:
        RESOURCES.storage = original
