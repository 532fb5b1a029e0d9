"""Every endpoint but a short public list needs a valid bearer token."""

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from main import create_app
from tests.conftest import RESOURCES

# Adding a public endpoint is a security decision: it must be listed here on purpose.
PUBLIC = {
    ("GET", "/"),
    ("POST", "/auth/register"),
    ("POST", "/auth/login"),
    ("GET", "/health"),
    ("GET", "/health/ready"),
}
PATH_VALUES = {"task_id": "1", "file_id": "1", "tag": "work"}


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
