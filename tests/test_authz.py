"""Every endpoint but a short public list needs a valid bearer token."""

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from main import create_app
from tests.account_helpers import make_personal_token
from tests.conftest import RESOURCES, register_and_login

# Adding a public endpoint is a security decision: it must be listed here on purpose.
PUBLIC = {
    ("GET", "/"),
    ("POST", "/auth/register"),
    ("POST", "/auth/login"),
    ("POST", "/auth/refresh"),
    ("POST", "/auth/verify-email"),
    ("POST", "/auth/password-reset/request"),
    ("POST", "/auth/password-reset"),
    ("GET", "/health"),
    ("GET", "/health/ready"),
}
PATH_VALUES = {"task_id": "1", "file_id": "1", "tag": "work", "session_id": "1", "token_id": "1"}


def _protected_operations(app: FastAPI) -> list[tuple[str, str]]:
    operations = []
    for template, methods in app.openapi()["paths"].items():
        path = re.sub(r"{(\w+)}", lambda match: PATH_VALUES[match.group(1)], template)
        operations += [
            (method.upper(), path) for method in methods if (method.upper(), template) not in PUBLIC
        ]
    return operations


OPERATIONS = _protected_operations(create_app(resources=RESOURCES))


def test_the_protected_list_is_not_empty() -> None:
    assert ("GET", "/auth/me") in OPERATIONS
    assert ("POST", "/tasks") in OPERATIONS


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_missing_token_is_401(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path)
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_bad_token_is_401(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path, headers={"Authorization": "Bearer not-a-token"})
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


# --- personal access tokens: only within their scopes, never the account -------------------

_SPEC = create_app().openapi()
_IMPLIES = {"tasks:write": {"tasks:read"}, "files:write": {"files:read"}}
TOKEN_SCOPES = ["tasks:read", "tasks:write", "files:read", "files:write"]


def _required_scopes(method: str, path: str) -> set[str]:
    template = next(
        t
        for t in _SPEC["paths"]
        if re.fullmatch(re.sub(r"{(\w+)}", r"[^/]+", t), path)
        and method.lower() in _SPEC["paths"][t]
    )
    security = _SPEC["paths"][template][method.lower()]["security"]
    return set(security[0]["OAuth2PasswordBearer"])


@pytest.fixture
def personal_tokens(client: TestClient) -> dict[str, str]:
    """One token per scope, all of one user."""
    user = register_and_login(client, "scoped")
    return {scope: make_personal_token(client, user, [scope])["token"] for scope in TOKEN_SCOPES}


def test_every_operation_but_reading_the_account_needs_a_scope() -> None:
    unscoped = [op for op in OPERATIONS if not _required_scopes(*op)]
    assert unscoped == [("GET", "/auth/me")]


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_a_personal_token_outside_its_scopes_is_403(
    client: TestClient, personal_tokens: dict[str, str], method: str, path: str
) -> None:
    needed = _required_scopes(method, path)
    for scope, token in personal_tokens.items():
        response = client.request(method, path, headers={"Authorization": f"Bearer {token}"})
        granted = {scope, *_IMPLIES.get(scope, ())}
        if needed <= granted:
            assert response.status_code not in (401, 403), (scope, response.text)
        else:
            assert response.status_code == 403, (scope, response.text)
            assert response.json()["code"] == "insufficient_scope"
