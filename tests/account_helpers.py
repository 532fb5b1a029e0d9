"""Helpers for the account tests: logins, e-mailed tokens read from the log, personal tokens."""

import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import AuthUser


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def login(client: TestClient, user: AuthUser, **headers: str) -> dict[str, Any]:
    """A new session for the user: its Token body."""
    response = client.post(
        "/auth/login", json={"username": user.username, "password": user.password}, headers=headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def sent_tokens(caplog: pytest.LogCaptureFixture, purpose: str) -> list[str]:
    """Tokens the log notifier delivered (the embedded default's mailbox), oldest first."""
    return [
        str(record.args[-1])  # type: ignore[index]
        for record in caplog.records
        if getattr(record, "event", None) == "account_token"
        and getattr(record, "purpose", None) == purpose
    ]


def verify_email(client: TestClient, user: AuthUser, caplog: pytest.LogCaptureFixture) -> None:
    """Verify the user's address the way a person would: request, read the token, send it."""
    with caplog.at_level(logging.INFO, logger="account_mail"):
        response = client.post("/auth/verify-email/request", headers=user.headers)
    assert response.status_code == 202, response.text
    token = sent_tokens(caplog, "verify_email")[-1]
    response = client.post("/auth/verify-email", json={"token": token})
    assert response.status_code == 200, response.text
    assert response.json()["email_verified"] is True


def make_personal_token(
    client: TestClient, user: AuthUser, scopes: list[str], days: int = 30, name: str = "script"
) -> dict[str, Any]:
    response = client.post(
        "/auth/tokens",
        json={"name": name, "scopes": scopes, "expires_in_days": days},
        headers=user.headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_refused_to_personal_tokens(
    client: TestClient, user: AuthUser, scopes: list[str], method: str, path: str, **request: Any
) -> None:
    """An account request that a personal token of the user's (with these scopes, whatever
    they are) may not make: 403 `insufficient_scope`."""
    token = make_personal_token(client, user, scopes)["token"]
    response = client.request(method, path, headers=bearer(token), **request)
    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"
