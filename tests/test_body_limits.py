"""Request body limits: MAX_BODY_BYTES for every body but an upload, decided before parsing,
authentication and rate limits, whether the size is declared or streamed (chunked).

Apps built here have small limits so bodies stay small; the default is checked on the shared app.
"""

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from config import Settings
from middleware import cannot_carry_a_body
from tests.conftest import PASSWORD, AppFactory, AuthUser, apps_with_own_limits

LIMIT = 2000


@pytest.fixture
def make_app() -> Iterator[AppFactory]:
    """Apps with the given settings and small body limits."""
    with apps_with_own_limits(max_body_bytes=LIMIT) as build:
        yield build


def client_of(app: FastAPI, ip: str = "203.0.113.20") -> TestClient:
    return TestClient(app, client=(ip, 50000))


def chunked(body: bytes, size: int = 512) -> Iterator[bytes]:
    """The body as a stream: sent with Transfer-Encoding: chunked, no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def post(client: TestClient, path: str, body: bytes, *, streamed: bool, **kwargs: Any) -> Any:
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    content = chunked(body) if streamed else body
    response = client.post(path, content=content, headers=headers, **kwargs)
    sent = response.request.headers
    if streamed:
        assert "content-length" not in sent
        assert sent["transfer-encoding"] == "chunked"
    else:
        assert sent["content-length"] == str(len(body))
    return response


def assert_body_too_large(response: Any, limit: int = LIMIT) -> None:
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "body_too_large"
    assert body["status"] == 413
    assert str(limit) in body["detail"]
    assert body["request_id"] == response.headers["X-Request-ID"]


def task_json(size: int) -> bytes:
    """A valid task body of exactly `size` bytes (padded with JSON whitespace)."""
    body = json.dumps({"title": "Padded"}).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


def huge_array(size: int) -> bytes:
    """A JSON array of `size` bytes or more: what a client would send to exhaust memory."""
    return b"[" + b"1," * (size // 2) + b"1]"


STREAMED = pytest.mark.parametrize("streamed", [False, True], ids=["declared", "chunked"])


# --- the default ----------------------------------------------------------------------------


def test_the_default_limit_is_one_mebibyte(client: TestClient, alice: AuthUser) -> None:
    assert Settings.model_fields["max_body_bytes"].default == 1024 * 1024
    headers = {**alice.headers, "Content-Type": "application/json"}
    response = client.post("/tasks", content=task_json(1024 * 1024), headers=headers)
    assert response.status_code == 201, response.text
    response = client.post("/tasks", content=task_json(1024 * 1024 + 1), headers=headers)
    assert_body_too_large(response, 1024 * 1024)


# --- a JSON route ---------------------------------------------------------------------------


@STREAMED
def test_an_oversized_json_body_is_413_before_authentication(
    make_app: AppFactory, streamed: bool
) -> None:
    client = client_of(make_app())
    # No token at all: the size is decided first, so this is a 413, not a 401.
    assert_body_too_large(post(client, "/tasks", huge_array(LIMIT * 50), streamed=streamed))
    response = post(client, "/tasks", task_json(LIMIT), streamed=streamed)
    assert response.status_code == 401


@STREAMED
def test_a_body_of_exactly_the_limit_is_accepted(
    make_app: AppFactory, streamed: bool, alice: AuthUser
) -> None:
    client = client_of(make_app())
    response = post(client, "/tasks", task_json(LIMIT), streamed=streamed, headers=alice.headers)
    assert response.status_code == 201, response.text
    response = post(
        client, "/tasks", task_json(LIMIT + 1), streamed=streamed, headers=alice.headers
    )
    assert_body_too_large(response)


@STREAMED
def test_a_413_costs_no_task_creation_budget(
    make_app: AppFactory, streamed: bool, alice: AuthUser
) -> None:
    client = client_of(make_app(rate_limit_enabled=True, rate_limit_create_task="1/hour"))
    for _ in range(3):
        response = post(
            client, "/tasks", task_json(LIMIT + 1), streamed=streamed, headers=alice.headers
        )
        assert_body_too_large(response)
    response = client.post("/tasks", json={"title": "Counted"}, headers=alice.headers)
    assert response.status_code == 201, response.text
    assert client.post("/tasks", json={"title": "Over"}, headers=alice.headers).status_code == 429


def test_a_route_that_reads_no_body_refuses_a_declared_one_before_acting(
    make_app: AppFactory, alice: AuthUser
) -> None:
    client = client_of(make_app(rate_limit_enabled=True, rate_limit_default="1/minute"))
    task = client.post("/tasks", json={"title": "Keep me"}, headers=alice.headers).json()
    response = client.request(
        "DELETE", f"/tasks/{task['id']}", content=b"x" * (LIMIT + 1), headers=alice.headers
    )
    assert_body_too_large(response)
    # Nothing happened, and nothing was counted: the one allowed request still deletes it.
    assert client.get(f"/tasks/{task['id']}", headers=alice.headers).status_code == 200
    response = client.delete(f"/tasks/{task['id']}", headers=alice.headers)
    assert response.status_code == 204


def test_the_files_routes_that_read_no_body_keep_the_general_limit(
    make_app: AppFactory, alice: AuthUser
) -> None:
    client = client_of(make_app())
    task_id = client.post("/tasks", json={"title": "Files"}, headers=alice.headers).json()["id"]
    response = client.request(
        "GET", f"/tasks/{task_id}/files", content=b"x" * (LIMIT + 1), headers=alice.headers
    )
    assert_body_too_large(response)


# --- login ----------------------------------------------------------------------------------


def _login_body(size: int, username: str, password: str) -> bytes:
    body = json.dumps({"username": username, "password": password}).encode()
    return body[:-1] + b" " * max(0, size - len(body)) + b"}"


@STREAMED
def test_an_oversized_login_is_413_and_costs_no_budget(
    make_app: AppFactory, streamed: bool, alice: AuthUser
) -> None:
    app = make_app(
        rate_limit_enabled=True, rate_limit_login="2/minute", rate_limit_login_username="2/minute"
    )
    client = client_of(app)
    for _ in range(3):
        body = _login_body(LIMIT + 1, alice.username, alice.password)
        assert_body_too_large(post(client, "/auth/login", body, streamed=streamed))
    form = b"username=" + alice.username.encode() + b"&password=" + b"p" * LIMIT
    response = post(
        client,
        "/auth/login",
        form,
        streamed=streamed,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_body_too_large(response)
    # Neither the address's budget nor the account's was touched by the refusals.
    response = client.post("/auth/login", json={"username": alice.username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    assert (
        client.post("/auth/login", json={"username": alice.username, "password": "x"}).status_code
        == 401
    )
    response = client.post("/auth/login", json={"username": alice.username, "password": PASSWORD})
    assert response.status_code == 429


@STREAMED
def test_register_refuses_an_oversized_body(make_app: AppFactory, streamed: bool) -> None:
    client = client_of(make_app())
    body = json.dumps(
        {"username": "big", "email": "big@example.com", "password": "p" * (LIMIT * 2)}
    ).encode()
    assert_body_too_large(post(client, "/auth/register", body, streamed=streamed))


# --- uploads keep MAX_UPLOAD_BYTES ----------------------------------------------------------


BOUNDARY = b"body-limit-test"


def _multipart(content: bytes, filename: bytes = b"big.pdf") -> bytes:
    return (
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: application/pdf\r\n\r\n" + content + b"\r\n"
        b"--" + BOUNDARY + b"--\r\n"
    )


@STREAMED
def test_uploads_are_bounded_by_max_upload_bytes_not_max_body_bytes(
    make_app: AppFactory, streamed: bool, alice: AuthUser
) -> None:
    max_upload = 20 * LIMIT
    client = client_of(make_app(max_upload_bytes=max_upload))
    task_id = client.post("/tasks", json={"title": "Files"}, headers=alice.headers).json()["id"]
    headers = {
        **alice.headers,
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY.decode()}",
    }
    exact = b"%PDF-" + b"x" * (max_upload - 5)
    response = post(
        client, f"/tasks/{task_id}/files", _multipart(exact), streamed=streamed, headers=headers
    )
    assert response.status_code == 201, response.text
    assert response.json()["file_size"] == max_upload
    response = post(
        client,
        f"/tasks/{task_id}/files",
        _multipart(exact + b"x"),
        streamed=streamed,
        headers=headers,
    )
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "file_too_large"


def test_a_much_larger_upload_is_still_file_too_large(client: TestClient, alice: AuthUser) -> None:
    task_id = client.post("/tasks", json={"title": "Files"}, headers=alice.headers).json()["id"]
    headers = {
        **alice.headers,
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY.decode()}",
    }
    content = b"%PDF-" + b"x" * (12 * 1024 * 1024)
    for streamed in (False, True):
        response = post(
            client,
            f"/tasks/{task_id}/files",
            _multipart(content),
            streamed=streamed,
            headers=headers,
        )
        assert response.status_code == 413, response.text
        assert response.json()["code"] == "file_too_large"


@pytest.mark.parametrize(
    ("headers", "bodiless"),
    [
        ([], True),
        ([(b"content-length", b"0")], True),
        ([(b"content-length", b"1")], False),
        ([(b"transfer-encoding", b"chunked")], False),
        ([(b"accept", b"*/*"), (b"content-length", b"2000000")], False),
    ],
)
def test_only_a_request_that_cannot_carry_a_body_skips_the_counting(
    headers: list[tuple[bytes, bytes]], bodiless: bool
) -> None:
    assert cannot_carry_a_body({"type": "http", "headers": headers}) is bodiless


# --- on a real server -----------------------------------------------------------------------


def _exchange(base_url: str, head: bytes, body: bytes = b"") -> bytes:
    """Send raw bytes to the server and read its answer, without ever finishing the body."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def test_a_server_answers_a_declared_oversize_without_waiting_for_the_body(
    live_server: str,
) -> None:
    head = (
        b"POST /tasks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000000\r\n\r\n"
    )
    # Only the headers are sent: the answer cannot depend on reading 100 MB.
    answer = _exchange(live_server, head, b"[1,")
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"application/problem+json" in answer


def test_a_server_stops_a_chunked_body_at_the_limit(live_server: str) -> None:
    head = (
        b"POST /tasks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"1," * 32 * 1024
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(17))  # > 1 MiB
    # The body never ends (no last chunk): the server must answer once the limit is passed.
    answer = _exchange(live_server, head, b"1\r\n[\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


# --- documentation --------------------------------------------------------------------------


def test_openapi_documents_the_413_of_every_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path, method in [
        ("/tasks", "post"),
        ("/tasks/bulk", "patch"),
        ("/tasks/{task_id}", "patch"),
        ("/tasks/{task_id}/tags", "post"),
        ("/auth/login", "post"),
        ("/auth/register", "post"),
    ]:
        response = spec["paths"][path][method]["responses"]["413"]
        assert "body_too_large" in response["description"], (path, method)
        assert "application/problem+json" in response["content"]
    upload = spec["paths"]["/tasks/{task_id}/files"]["post"]["responses"]["413"]
    assert "file_too_large" in upload["description"]
