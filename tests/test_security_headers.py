"""Security headers on every response, and CORS only for the configured origins."""

from fastapi.testclient import TestClient

from config import Settings
from main import create_app
from tests.conftest import RESOURCES, AuthUser

ORIGIN = "https://app.example.com"


def test_nosniff_on_every_kind_of_response(client: TestClient, alice: AuthUser) -> None:
    responses = [
        client.get("/"),
        client.get("/health"),
        client.get("/openapi.json"),
        client.get("/docs"),
        client.get("/tasks", headers=alice.headers),
        client.get("/tasks"),  # 401
        client.get("/tasks/999999", headers=alice.headers),  # 404
        client.get("/tasks/0", headers=alice.headers),  # 422
        client.put("/tasks", headers=alice.headers),  # 405
        client.get("/no/such/path"),  # 404 without a route
    ]
    for response in responses:
        assert response.headers["X-Content-Type-Options"] == "nosniff", response.request.url
        assert response.headers["X-Request-ID"]


def test_no_server_banner_from_the_app(client: TestClient) -> None:
    # uvicorn adds its own `server` header unless served with --no-server-header (as we do).
    assert "server" not in client.get("/").headers
    assert "x-powered-by" not in client.get("/").headers


def test_cors_is_off_without_configured_origins(client: TestClient) -> None:
    response = client.get("/", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in response.headers
    preflight = client.options(
        "/tasks", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code == 405


def test_cors_allows_only_the_listed_origins() -> None:
    client = TestClient(create_app(Settings(cors_origins=[ORIGIN]), resources=RESOURCES))
    allowed = client.get("/", headers={"Origin": ORIGIN})
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    exposed = allowed.headers["access-control-expose-headers"]
    for header in ("X-Request-ID", "X-Total-Count", "Retry-After", "X-RateLimit-Remaining"):
        assert header in exposed
    preflight = client.options(
        "/tasks",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert preflight.headers["X-Content-Type-Options"] == "nosniff"
    other = client.get("/", headers={"Origin": "https://evil.example.net"})
    assert "access-control-allow-origin" not in other.headers
