"""Rate limits: budgets per route and key, 429 problems, shared Redis counters, Redis failure.

The suite runs with RATE_LIMIT_ENABLED=false; these tests build their own apps with limits on,
each with its own counter prefix so runs and tests never share a budget.
"""

import re
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

import rate_limit_config as rate_limits
from tests.conftest import (
    BACKEND,
    PASSWORD,
    TEST_REDIS_URL,
    AppFactory,
    AuthUser,
    apps_with_own_limits,
)
from tests.tcp_proxy import TcpProxy


@pytest.fixture
def make_app() -> Iterator[AppFactory]:
    """Build apps with rate limiting on and the given settings; Redis keys are removed after."""
    with apps_with_own_limits(rate_limit_enabled=True) as build:
        yield build


def client_at(app: FastAPI, ip: str = "203.0.113.7") -> TestClient:
    """A client whose requests come from `ip`, as uvicorn would report the peer."""
    return TestClient(app, client=(ip, 50000))


WRONG_PASSWORD = "wrong password!"


def _login(client: TestClient, username: str, password: str = WRONG_PASSWORD) -> Any:
    return client.post("/auth/login", json={"username": username, "password": password})


def _assert_rate_limited(response: Any) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == "rate_limited"
    assert body["status"] == 429
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert re.fullmatch(r"[1-9][0-9]*", response.headers["Retry-After"])
    assert response.headers["X-RateLimit-Remaining"] == "0"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- login ---------------------------------------------------------------------------------


def test_login_limit_trips_at_the_configured_count_and_says_when_to_retry(
    make_app: AppFactory,
) -> None:
    client = client_at(make_app(rate_limit_login="3/minute"))
    for _ in range(3):
        assert _login(client, "nobody").status_code == 401
    response = _login(client, "nobody")
    _assert_rate_limited(response)
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["X-RateLimit-Limit"] == "3"


def test_a_spent_login_budget_refuses_even_the_right_password(
    make_app: AppFactory, alice: AuthUser
) -> None:
    client = client_at(make_app(rate_limit_login="2/minute"))
    for _ in range(2):
        assert _login(client, alice.username).status_code == 401
    _assert_rate_limited(_login(client, alice.username, alice.password))


def test_login_limit_is_per_client_ip(make_app: AppFactory) -> None:
    app = make_app(rate_limit_login="1/minute")
    first, second = client_at(app, "198.51.100.1"), client_at(app, "198.51.100.2")
    assert _login(first, "nobody").status_code == 401
    _assert_rate_limited(_login(first, "nobody"))
    assert _login(second, "nobody").status_code == 401


def test_forwarded_for_headers_do_not_change_the_client(make_app: AppFactory) -> None:
    # Only uvicorn's --proxy-headers, for trusted proxies, may rewrite the client address.
    client = client_at(make_app(rate_limit_login="2/minute"))
    for n in range(2):
        response = client.post(
            "/auth/login",
            json={"username": "nobody", "password": "wrong password!"},
            headers={"X-Forwarded-For": f"10.0.0.{n}", "X-Real-IP": f"10.0.1.{n}"},
        )
        assert response.status_code == 401
    response = client.post(
        "/auth/login",
        json={"username": "nobody", "password": "wrong password!"},
        headers={"X-Forwarded-For": "10.9.9.9"},
    )
    _assert_rate_limited(response)


def test_per_username_login_limit_holds_across_client_ips(make_app: AppFactory) -> None:
    app = make_app(rate_limit_login="100/minute", rate_limit_login_username="3/minute")
    for n in range(3):
        assert _login(client_at(app, f"192.0.2.{n}"), "target-user").status_code == 401
    # A fourth address, the same account (in another case, by form): still refused.
    response = client_at(app, "192.0.2.99").post(
        "/auth/login", data={"username": "TARGET-user", "password": "guess number 4"}
    )
    _assert_rate_limited(response)
    # The budget is the account's, not the address's: other accounts can still log in.
    assert _login(client_at(app, "192.0.2.99"), "someone-else").status_code == 401


def test_login_without_a_username_still_counts_per_ip(make_app: AppFactory) -> None:
    client = client_at(make_app(rate_limit_login="1/minute"))
    assert client.post("/auth/login", content=b"not json").status_code == 422
    _assert_rate_limited(client.post("/auth/login", content=b"not json"))


# --- register ------------------------------------------------------------------------------


def test_register_limit_is_per_client_ip(make_app: AppFactory) -> None:
    app = make_app(rate_limit_register="2/hour")
    client = client_at(app, "198.51.100.10")
    for name in ("reg-one", "reg-two"):
        body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
        assert client.post("/auth/register", json=body).status_code == 201
    body = {"username": "reg-three", "email": "reg-three@example.com", "password": PASSWORD}
    _assert_rate_limited(client.post("/auth/register", json=body))
    assert client_at(app, "198.51.100.11").post("/auth/register", json=body).status_code == 201


def test_successful_responses_carry_the_rate_limit_headers(make_app: AppFactory) -> None:
    client = client_at(make_app(rate_limit_register="10/hour"))
    body = {"username": "headers", "email": "headers@example.com", "password": PASSWORD}
    response = client.post("/auth/register", json=body)
    assert response.status_code == 201
    assert response.headers["X-RateLimit-Limit"] == "10"
    assert response.headers["X-RateLimit-Remaining"] == "9"
    reset = int(response.headers["X-RateLimit-Reset"])
    assert time.time() < reset <= time.time() + 3601
    assert "Retry-After" not in response.headers


# --- task creation and the default per-user budget -----------------------------------------


def test_task_creation_limit_is_per_user(
    make_app: AppFactory, alice: AuthUser, bob: AuthUser
) -> None:
    limited = client_at(make_app(rate_limit_create_task="2/hour"))
    for n in range(2):
        response = limited.post("/tasks", json={"title": f"task {n}"}, headers=alice.headers)
        assert response.status_code == 201
        assert response.headers["X-RateLimit-Limit"] == "2"
    _assert_rate_limited(limited.post("/tasks", json={"title": "one more"}, headers=alice.headers))
    # Another user from the same address has a budget of their own...
    assert limited.post("/tasks", json={"title": "bob's"}, headers=bob.headers).status_code == 201
    # ...and reading is the default budget, not the creation one.
    assert limited.get("/tasks", headers=alice.headers).status_code == 200


def test_default_limit_covers_authenticated_endpoints_per_user(
    make_app: AppFactory, alice: AuthUser, bob: AuthUser
) -> None:
    limited = client_at(make_app(rate_limit_default="2/minute"))
    for _ in range(2):
        response = limited.get("/tasks", headers=alice.headers)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "2"
    _assert_rate_limited(limited.get("/tasks", headers=alice.headers))
    assert limited.get("/tasks", headers=bob.headers).status_code == 200


def test_requests_with_bad_tokens_are_limited_per_client_ip(make_app: AppFactory) -> None:
    limited = client_at(make_app(rate_limit_default="2/minute"))
    for _ in range(2):
        assert limited.get("/auth/me", headers={"Authorization": "Bearer junk"}).status_code == 401
    _assert_rate_limited(limited.get("/auth/me", headers={"Authorization": "Bearer junk"}))


def test_operations_endpoints_are_not_limited(make_app: AppFactory, alice: AuthUser) -> None:
    limited = client_at(make_app(rate_limit_default="1/minute"))
    for path in ("/health", "/health/ready", "/", "/openapi.json"):
        for _ in range(3):
            response = limited.get(path, headers=alice.headers)
            assert response.status_code == 200, path
            assert "X-RateLimit-Limit" not in response.headers


def test_upload_budget_is_per_user_across_tasks(make_app: AppFactory, alice: AuthUser) -> None:
    # The files route is marked the same way; a stand-in route checks the budget's scope.
    app = make_app(rate_limit_upload="2/hour")

    @app.post("/tasks/{task_id}/upload-probe", status_code=201)
    @rate_limits.rate_limited(rate_limits.UPLOAD)
    def upload_probe(task_id: int, request: Request) -> dict[str, int | None]:
        return {"task_id": task_id, "user_id": rate_limits.authenticated_user(request)}

    limited = client_at(app)
    for task_id in (1, 2):
        response = limited.post(f"/tasks/{task_id}/upload-probe", headers=alice.headers)
        assert response.status_code == 201
        assert response.json()["user_id"] == alice.id
    _assert_rate_limited(limited.post("/tasks/3/upload-probe", headers=alice.headers))


def test_rate_limit_enabled_false_turns_every_limit_off(app: FastAPI, client: TestClient) -> None:
    assert app.state.limiter is None
    for _ in range(12):
        response = _login(client, "nobody")
        assert response.status_code == 401
        assert "X-RateLimit-Limit" not in response.headers


# --- Redis: shared budgets and failure -----------------------------------------------------


@pytest.mark.postgres_redis
@pytest.mark.skipif(BACKEND == "embedded", reason="needs the real Redis of the production pass")
def test_two_app_instances_sharing_redis_share_one_budget(make_app: AppFactory) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    first = make_app(rate_limit_login="3/minute", key_prefix=prefix, redis_url=TEST_REDIS_URL)
    second = make_app(rate_limit_login="3/minute", key_prefix=prefix, redis_url=TEST_REDIS_URL)
    assert _login(client_at(first), "nobody").status_code == 401
    assert _login(client_at(second), "nobody").status_code == 401
    assert _login(client_at(first), "nobody").status_code == 401
    response = _login(client_at(second), "nobody")
    _assert_rate_limited(response)
    # The counters really are in Redis, not in either process.
    keys = list(redis.Redis.from_url(TEST_REDIS_URL).scan_iter(match=f"*{prefix}*"))
    assert keys


@pytest.mark.postgres_redis
@pytest.mark.skipif(BACKEND == "embedded", reason="needs the real Redis of the production pass")
def test_two_deployments_sharing_redis_keep_their_own_budgets(make_app: AppFactory) -> None:
    # Same limiter key prefix, as two installations of this service have; REDIS_KEY_PREFIX
    # (derived from each one's database by default) is all that keeps them apart.
    limiter_prefix = f"test-{uuid.uuid4().hex}"
    deployments = [
        make_app(
            rate_limit_login="2/minute",
            key_prefix=limiter_prefix,
            redis_url=TEST_REDIS_URL,
            redis_key_prefix=f"deploy-{name}-{limiter_prefix[5:13]}",
        )
        for name in ("a", "b")
    ]
    first, second = (client_at(app) for app in deployments)
    assert [_login(first, "nobody").status_code for _ in range(2)] == [401, 401]
    _assert_rate_limited(_login(first, "nobody"))
    assert [_login(second, "nobody").status_code for _ in range(2)] == [401, 401]
    _assert_rate_limited(_login(second, "nobody"))
    keys = [
        key.decode()
        for key in redis.Redis.from_url(TEST_REDIS_URL).scan_iter(match=f"*{limiter_prefix}*")
    ]
    assert keys
    for key in keys:
        assert key.startswith(("deploy-a-", "deploy-b-")), key
        assert key.split(":", 2)[1] == "limits"


def test_dead_redis_still_answers_and_limits_in_memory(make_app: AppFactory) -> None:
    client = client_at(
        make_app(rate_limit_login="3/minute", redis_url=f"redis://127.0.0.1:{_closed_port()}/0")
    )
    for _ in range(3):
        assert _login(client, "nobody").status_code == 401
    _assert_rate_limited(_login(client, "nobody"))


@pytest.mark.postgres_redis
@pytest.mark.skipif(BACKEND == "embedded", reason="needs the real Redis of the production pass")
def test_redis_dying_mid_run_falls_back_to_memory_never_500(make_app: AppFactory) -> None:
    target = urlsplit(TEST_REDIS_URL)
    with TcpProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        redis_url = TEST_REDIS_URL.replace(target.netloc, f"127.0.0.1:{proxy.port}", 1)
        app = make_app(rate_limit_login="3/minute", redis_url=redis_url)
        client = client_at(app)
        assert _login(client, "nobody").status_code == 401
        assert app.state.limiter.storage_dead is False
        proxy.close()
        statuses = [_login(client, "nobody").status_code for _ in range(4)]
        assert app.state.limiter.storage_dead is True
        # The in-memory count starts afresh: three more attempts, then the fourth is refused.
        assert statuses == [401, 401, 401, 429]


def test_hung_redis_costs_a_bounded_wait_then_limits_in_memory(make_app: AppFactory) -> None:
    with TcpProxy("127.0.0.1", _closed_port()) as proxy:
        proxy.blackhole()
        app = make_app(rate_limit_login="2/minute", redis_url=f"redis://127.0.0.1:{proxy.port}/0")
        client = client_at(app)
        started = time.monotonic()
        assert _login(client, "nobody").status_code == 401
        # One Redis timeout (REDIS_SOCKET_TIMEOUT_MS), not a hang.
        assert time.monotonic() - started < 10
        assert _login(client, "nobody").status_code == 401
        _assert_rate_limited(_login(client, "nobody"))


# --- slowapi's private API, and what is worked out once -------------------------------------


def test_canary_slowapi_private_members_still_exist() -> None:
    """Fails loudly when slowapi changes a private member `SlowapiInternals` relies on."""
    import inspect

    from slowapi import Limiter

    limiter = Limiter(key_func=rate_limits.client_ip, default_limits=["2/minute"])
    assert limiter._storage_dead is False
    assert rate_limits.SlowapiInternals.storage_dead(limiter) is False
    parameters = list(inspect.signature(Limiter._check_request_limit).parameters)
    assert parameters[:4] == ["self", "request", "endpoint_func", "in_middleware"]

    def endpoint() -> None:  # pragma: no cover - counted against, never called
        return None

    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [],
                       "client": ("203.0.113.9", 1), "app": None, "state": {}})  # fmt: skip
    rate_limits.SlowapiInternals.hit(limiter, request, endpoint)
    hit = rate_limits.SlowapiInternals.last_hit(request)
    assert hit is not None
    item, identifiers = hit
    assert (item.amount, item.GRANULARITY.name) == (2, "minute")
    assert identifiers


def test_route_auth_requirements_are_worked_out_once_per_route(
    make_app: AppFactory, alice: AuthUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    worked_out: list[object] = []
    original = rate_limits.requires_auth

    def counted(dependant: Any) -> bool:
        worked_out.append(dependant)
        return original(dependant)

    monkeypatch.setattr(rate_limits, "requires_auth", counted)
    client = TestClient(app)
    rounds = []
    for _ in range(3):
        assert client.get("/tasks", headers=alice.headers).status_code == 200
        assert client.get("/health").status_code == 200
        rounds.append(len(worked_out))
    # The first requests work out their route's requirement; the later ones reuse it.
    assert rounds == [2, 2, 2]
