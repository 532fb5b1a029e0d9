"""The login body is read and parsed once, and every budget counts every attempt, whatever its
shape: padded JSON, OAuth2 forms, malformed or oversized forms (4xx, never a 500).
"""

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import AppFactory, AuthUser, apps_with_own_limits

FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def make_app() -> Iterator[AppFactory]:
    """Apps with rate limiting on, each with counters of its own."""
    with apps_with_own_limits(rate_limit_enabled=True) as build:
        yield build


def client_at(app: FastAPI, ip: str) -> TestClient:
    return TestClient(app, client=(ip, 50000), raise_server_exceptions=False)


def padded_json(username: str, password: str, padding: int = 70 * 1024) -> bytes:
    """Valid login JSON, padded with whitespace past the 64 KiB the limiter once gave up at."""
    return b" " * padding + json.dumps({"username": username, "password": password}).encode()


def login_json(client: TestClient, body: bytes) -> Any:
    return client.post("/auth/login", content=body, headers={"Content-Type": "application/json"})


def assert_status(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


# --- padding never escapes the per-username budget ------------------------------------------


def test_padded_json_is_counted_by_the_username_budget(
    make_app: AppFactory, alice: AuthUser
) -> None:
    app = make_app(rate_limit_login="100/minute", rate_limit_login_username="2/minute")
    for n in range(2):
        body = json.dumps({"username": alice.username, "password": "wrong guess"}).encode()
        assert_status(login_json(client_at(app, f"192.0.2.{n}"), body), 401, "invalid_credentials")
    # The right password, padded, from yet another address: the account's budget is spent.
    response = login_json(client_at(app, "192.0.2.50"), padded_json(alice.username, alice.password))
    assert_status(response, 429, "rate_limited")


def test_padded_attempts_spend_the_username_budget(make_app: AppFactory, alice: AuthUser) -> None:
    app = make_app(rate_limit_login="100/minute", rate_limit_login_username="2/minute")
    for n in range(2):
        response = login_json(client_at(app, f"192.0.2.{n}"), padded_json("ALICE", "wrong guess"))
        assert_status(response, 401, "invalid_credentials")
    response = client_at(app, "192.0.2.60").post(
        "/auth/login", json={"username": alice.username, "password": alice.password}
    )
    assert_status(response, 429, "rate_limited")


def test_padded_json_within_the_limit_still_logs_in(make_app: AppFactory, alice: AuthUser) -> None:
    response = login_json(
        client_at(make_app(), "192.0.2.70"), padded_json(alice.username, alice.password)
    )
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "bearer"


def test_a_form_counts_under_the_username_it_logs_in_with(
    make_app: AppFactory, alice: AuthUser
) -> None:
    # A repeated field is read once, the same way for the budget and for the login.
    app = make_app(rate_limit_login="100/minute", rate_limit_login_username="1/minute")
    response = client_at(app, "192.0.2.80").post(
        "/auth/login", json={"username": alice.username, "password": "wrong guess"}
    )
    assert_status(response, 401, "invalid_credentials")
    form = f"username=someone-else&username={alice.username}&password={alice.password}"
    response = client_at(app, "192.0.2.81").post(
        "/auth/login", content=form, headers={"Content-Type": FORM}
    )
    assert_status(response, 429, "rate_limited")


def test_padded_form_is_counted_by_the_username_budget(
    make_app: AppFactory, alice: AuthUser
) -> None:
    app = make_app(rate_limit_login="100/minute", rate_limit_login_username="1/minute")
    body = {"username": alice.username, "password": "wrong guess"}
    assert_status(
        client_at(app, "192.0.2.90").post("/auth/login", json=body), 401, "invalid_credentials"
    )
    padding = "&".join(f"pad{n}=" + "x" * 1000 for n in range(10))
    form = f"{padding}&username={alice.username}&password={alice.password}"
    response = client_at(app, "192.0.2.91").post(
        "/auth/login", content=form, headers={"Content-Type": FORM}
    )
    assert_status(response, 429, "rate_limited")


# --- malformed and huge forms: 4xx, never a 500, and still counted --------------------------

_BOUNDARY = "login-test-boundary"


def _multipart(*parts: tuple[str, bytes]) -> bytes:
    body = b""
    for name, value in parts:
        body += (
            f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value
            + b"\r\n"
        )
    return body + f"--{_BOUNDARY}--\r\n".encode()


MULTIPART = f"multipart/form-data; boundary={_BOUNDARY}"
MALFORMED_FORMS = {
    "1100 fields": (
        FORM,
        ("&".join(f"f{n}=v" for n in range(1100)) + "&username=alice&password=pw").encode(),
    ),
    "a 1 MiB multipart field": (
        MULTIPART,
        _multipart(("username", b"a" * 1024 * 1024), ("password", b"pw")),
    ),
    "a large multipart field under the body limit": (
        MULTIPART,
        _multipart(("username", b"alice"), ("password", b"p" * 500 * 1024)),
    ),
    "garbage multipart": (MULTIPART, b"\x00\xffgarbage\r\n\r\n--"),
    "multipart without a boundary": ("multipart/form-data", _multipart(("username", b"alice"))),
    "multipart with an empty boundary": ("multipart/form-data; boundary=", b"--\r\n"),
    "a file part": (
        MULTIPART,
        f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="username"; '
        f'filename="a.txt"\r\n\r\nalice\r\n--{_BOUNDARY}--\r\n'.encode(),
    ),
    "truncated multipart": (MULTIPART, _multipart(("username", b"alice"))[:-10]),
    "garbage urlencoded": (FORM, b"\x00\xff=&&=%zz&username=%ff"),
}


@pytest.mark.parametrize(
    ("content_type", "body"), MALFORMED_FORMS.values(), ids=MALFORMED_FORMS.keys()
)
def test_a_malformed_form_is_a_4xx_problem(
    make_app: AppFactory, content_type: str, body: bytes
) -> None:
    client = client_at(make_app(rate_limit_login="100/minute"), "198.51.100.30")
    for _ in range(2):  # the same body twice: nothing left over from the first breaks the second
        response = client.post("/auth/login", content=body, headers={"Content-Type": content_type})
        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["request_id"] == response.headers["X-Request-ID"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (FORM, ("&".join(f"f{n}=v" for n in range(1100))).encode()),
        (MULTIPART, b"\x00\xffgarbage\r\n\r\n--"),
        ("multipart/form-data", b"--x\r\n"),
        ("application/json", b"{not json"),
    ],
    ids=["1100 fields", "garbage multipart", "no boundary", "bad json"],
)
def test_an_unparseable_login_still_counts_per_address(
    make_app: AppFactory, content_type: str, body: bytes
) -> None:
    client = client_at(make_app(rate_limit_login="2/minute"), "198.51.100.40")
    for _ in range(2):
        response = client.post("/auth/login", content=body, headers={"Content-Type": content_type})
        assert response.status_code in (400, 422), response.text
    response = client.post("/auth/login", json={"username": "nobody", "password": "whatever1"})
    assert_status(response, 429, "rate_limited")


def test_an_unparseable_form_is_a_bad_request_naming_the_problem(make_app: AppFactory) -> None:
    client = client_at(make_app(), "198.51.100.50")
    body = ("&".join(f"f{n}=v" for n in range(1100))).encode()
    response = client.post("/auth/login", content=body, headers={"Content-Type": FORM})
    assert_status(response, 400, "bad_request")
    assert "fields" in response.json()["detail"]


def test_the_swagger_form_still_logs_in(make_app: AppFactory, alice: AuthUser) -> None:
    form = {
        "grant_type": "password",
        "username": alice.username,
        "password": alice.password,
        "scope": "",
        "client_id": "",
        "client_secret": "",
    }
    response = client_at(make_app(), "198.51.100.60").post("/auth/login", data=form)
    assert response.status_code == 200, response.text


def test_a_multipart_login_works(make_app: AppFactory, alice: AuthUser) -> None:
    body = _multipart(("username", alice.username.encode()), ("password", alice.password.encode()))
    response = client_at(make_app(), "198.51.100.61").post(
        "/auth/login", content=body, headers={"Content-Type": MULTIPART}
    )
    assert response.status_code == 200, response.text
