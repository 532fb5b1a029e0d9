"""Logging: JSON and text lines, the access record, file rotation, 500 tracebacks, no secrets."""

import io
import json
import logging
import os
import re
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

from config import Settings, get_settings
from dependencies import CurrentUser
from logging_config import JsonFormatter, RequestContextFilter, configure_logging
from main import create_app
from tests.conftest import RESOURCES, AuthUser, register_and_login


class CaptureHandler(logging.Handler):
    """Keeps every record, and its full formatted form (message, extras, traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self.addFilter(RequestContextFilter())
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    configure_logging(get_settings())


@contextmanager
def captured_logs() -> Iterator[CaptureHandler]:
    """Capture everything logged at any level, below the configured one too."""
    root = logging.getLogger()
    handler, level = CaptureHandler(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _root_stream(app: FastAPI) -> io.StringIO:
    """Point the app's configured stderr handler at a buffer."""
    del app  # configured when the app was built
    stream = io.StringIO()
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    assert len(handlers) == 1
    handlers[0].setStream(stream)
    return stream


def _app_with(**overrides: Any) -> FastAPI:
    return create_app(Settings(**overrides), resources=RESOURCES)


# --- formats -------------------------------------------------------------------------------


def test_json_format_is_one_object_per_line_with_request_and_user(alice: AuthUser) -> None:
    app = _app_with(log_format="json")
    stream = _root_stream(app)
    response = TestClient(app).get(
        "/tasks", headers={**alice.headers, "X-Request-ID": "req-json-1"}
    )
    assert response.status_code == 200
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert records
    for record in records:
        assert {"timestamp", "level", "logger", "message", "request_id", "user_id"} <= set(record)
        assert record["timestamp"].endswith("Z")
    access = [r for r in records if r["logger"] == "access" and r["request_id"] == "req-json-1"]
    assert len(access) == 1
    assert access[0]["user_id"] == alice.id
    assert access[0]["method"] == "GET"
    assert access[0]["path"] == "/tasks"
    assert access[0]["status"] == 200
    assert isinstance(access[0]["duration_ms"], float | int)


def test_text_format_is_a_readable_line_with_the_request_id(alice: AuthUser) -> None:
    app = _app_with(log_format="text")
    stream = _root_stream(app)
    TestClient(app).get("/auth/me", headers={**alice.headers, "X-Request-ID": "req-text-1"})
    lines = [line for line in stream.getvalue().splitlines() if "req-text-1" in line]
    assert len(lines) == 1
    assert " access [req-text-1] GET /auth/me 200 " in lines[0]
    assert f"user={alice.id}" in lines[0]
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])


def test_records_logged_inside_a_request_carry_its_user_id(alice: AuthUser) -> None:
    app = _app_with()

    @app.get("/log-probe")
    def log_probe(user: CurrentUser) -> dict[str, int]:
        logging.getLogger("probe").warning("inside the handler")
        return {"id": user.id}

    with captured_logs() as logs:
        assert TestClient(app).get("/log-probe", headers=alice.headers).status_code == 200
    (record,) = [r for r in logs.records if r.name == "probe"]
    assert getattr(record, "user_id", None) == alice.id
    assert getattr(record, "request_id", None)


def test_exactly_one_access_record_per_request_and_uvicorns_is_off(client: TestClient) -> None:
    with captured_logs() as logs:
        client.get("/", headers={"X-Request-ID": "one-access-line"})
    access = [r for r in logs.records if getattr(r, "request_id", None) == "one-access-line"]
    assert [r.name for r in access] == ["access"]
    assert not logging.getLogger("uvicorn.access").isEnabledFor(logging.INFO)


def test_sql_is_never_echoed() -> None:
    assert not RESOURCES.engine.echo
    assert not logging.getLogger("sqlalchemy.engine").isEnabledFor(logging.INFO)


def test_log_file_is_rotated_by_size(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "app.log"
    _app_with(log_file=str(log_file), log_file_max_bytes=2048, log_file_backup_count=2)
    for n in range(200):
        logging.getLogger("rotation").warning("line %d of a log that outgrows its file", n)
    files = sorted(path.name for path in log_file.parent.iterdir())
    assert files == ["app.log", "app.log.1", "app.log.2"]
    assert all(path.stat().st_size <= 2048 for path in log_file.parent.iterdir())


def test_log_file_and_its_rotated_files_are_private(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "app.log"
    log_file.parent.mkdir()
    log_file.write_text("left by an earlier release\n")
    log_file.chmod(0o644)
    old_umask = os.umask(0o022)
    try:
        _app_with(log_file=str(log_file), log_file_max_bytes=2048, log_file_backup_count=2)
        for n in range(200):
            logging.getLogger("rotation").warning("line %d of a log that outgrows its file", n)
    finally:
        os.umask(old_umask)
    files = sorted(log_file.parent.iterdir())
    assert [path.name for path in files] == ["app.log", "app.log.1", "app.log.2"]
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in files} == {
        "app.log": 0o600,
        "app.log.1": 0o600,
        "app.log.2": 0o600,
    }


# --- client input cannot forge log lines -----------------------------------------------------

FORGED = "2026-01-01 00:00:00,000 CRITICAL access [forged] GET /admin 200"
_RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def _record_lines(text: str) -> list[str]:
    """The lines of a text log that start a record (tracebacks continue the one before)."""
    return [line for line in text.splitlines() if _RECORD_START.match(line)]


def test_control_characters_in_a_path_cannot_forge_a_log_line(alice: AuthUser) -> None:
    app = _app_with(log_format="text")
    stream = _root_stream(app)
    client = TestClient(app)
    for path in (
        f"/tasks/%0A{FORGED}",
        f"/nowhere%0D%0A{FORGED}",
        f"/nowhere%0D{FORGED}%1B[2J%E2%80%A8{FORGED}%C2%85{FORGED}",
    ):
        response = client.get(path, headers=alice.headers)
        assert response.status_code in (404, 422)
    log = stream.getvalue()
    assert "\r" not in log
    assert "\x1b" not in log
    assert "\u2028" not in log
    assert "\x85" not in log
    lines = log.splitlines()
    assert not [line for line in lines if line.startswith(FORGED[:10])]
    access = [line for line in _record_lines(log) if " access " in line]
    assert len(access) == 3
    assert all(line.count(FORGED) >= 1 for line in access)
    assert f"GET /tasks/\\n{FORGED} 4" in access[0]
    assert f"GET /nowhere\\r\\n{FORGED} 404" in access[1]
    assert f"\\r{FORGED}\\x1b[2J\\u2028{FORGED}\\x85{FORGED} 404" in access[2]


def test_headers_logged_by_a_route_are_escaped_too() -> None:
    app = _app_with(log_format="text")

    @app.get("/agent-probe")
    def agent_probe(request: Request) -> None:
        logging.getLogger("probe").warning("client says %s", request.headers["user-agent"])

    stream = _root_stream(app)
    agent = "evil\x1b]0;pwned\x07" + FORGED
    headers = {"User-Agent": agent.encode("latin-1")}
    assert TestClient(app).get("/agent-probe", headers=headers).status_code == 200
    [line] = [line for line in stream.getvalue().splitlines() if " probe " in line]
    assert line.endswith("client says evil\\x1b]0;pwned\\x07" + FORGED)


def test_exception_messages_cannot_forge_a_log_line() -> None:
    app = _app_with(log_format="text")

    @app.get("/boom")
    def boom(value: str) -> None:
        try:
            raise KeyError(value)
        except KeyError as exc:
            error = ValueError(f"cannot use {value}")
            error.add_note(f"while reading {value}")
            raise error from exc

    stream = _root_stream(app)
    response = TestClient(app).get("/boom", params={"value": f"x\r\n{FORGED}\n{FORGED}"})
    assert response.status_code == 500
    log = stream.getvalue()
    assert "Traceback (most recent call last):" in log
    assert not [line for line in log.splitlines() if line.startswith(FORGED[:10])]
    assert f"ValueError: cannot use x\\r\\n{FORGED}\\n{FORGED}" in log
    assert f"while reading x\\r\\n{FORGED}\\n{FORGED}" in log
    # The JSON format needs nothing of this: JSON strings escape control characters.
    json_app = _app_with(log_format="json")

    @json_app.get("/boom")
    def json_boom(value: str) -> None:
        raise ValueError(f"cannot use {value}")

    stream = _root_stream(json_app)
    assert TestClient(json_app).get("/boom", params={"value": f"x\n{FORGED}"}).status_code == 500
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert any(f"cannot use x\n{FORGED}" in r.get("exc_info", "") for r in records)


# --- errors --------------------------------------------------------------------------------


def test_an_unhandled_error_is_a_500_problem_whose_request_id_is_in_the_traceback() -> None:
    app = _app_with()

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("internal detail the client must not see")

    with captured_logs() as logs:
        response = TestClient(app).get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    body = response.json()
    request_id = response.headers["X-Request-ID"]
    assert body["code"] == "internal_error"
    assert body["request_id"] == request_id
    assert "internal detail" not in response.text
    assert "Traceback" not in response.text
    tracebacks = [line for line in logs.lines if "Traceback" in line]
    assert len(tracebacks) == 1
    record = json.loads(tracebacks[0])
    assert record["request_id"] == request_id
    assert request_id in record["message"]
    assert "RuntimeError: internal detail" in record["exc_info"]
    access = [r for r in logs.records if r.name == "access"]
    assert [getattr(r, "status", None) for r in access] == [500]


# --- secrets never logged ------------------------------------------------------------------


def _scan(lines: list[str], secrets: dict[str, str]) -> list[str]:
    return [
        f"{name} in: {line[:200]}" for line in lines for name, s in secrets.items() if s in line
    ]


def test_passwords_tokens_hashes_and_file_contents_never_reach_the_log(
    client: TestClient, db_connection: Connection
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    file_content = f"file-content-{uuid.uuid4().hex}"
    with captured_logs() as logs:
        user = register_and_login(client, "secretive", password)
        # The form login, a wrong password, bad input and a conflict log nothing secret either.
        form = client.post("/auth/login", data={"username": user.username, "password": password})
        assert form.status_code == 200
        assert (
            client.post(
                "/auth/login", json={"username": "secretive", "password": password + "x"}
            ).status_code
            == 401
        )
        bad = {"username": "other", "email": "other@example.com", "password": password + "\x00"}
        assert client.post("/auth/register", json=bad).status_code == 422
        dup = {"username": "secretive", "email": "s2@example.com", "password": password}
        assert client.post("/auth/register", json=dup).status_code == 409
        assert client.get("/auth/me", headers=user.headers).status_code == 200
        task = client.post("/tasks", json={"title": "holds a file"}, headers=user.headers)
        assert task.status_code == 201
        # The file's bytes pass through the upload and the download, and are logged by neither.
        upload = client.post(
            f"/tasks/{task.json()['id']}/files",
            files={"file": ("notes.txt", file_content.encode(), "text/plain")},
            headers=user.headers,
        )
        assert upload.status_code == 201, upload.text
        download = client.get(f"/files/{upload.json()['id']}", headers=user.headers)
        assert download.status_code == 200
        assert download.content == file_content.encode()
    hashed = db_connection.execute(
        text("SELECT hashed_password FROM users WHERE id = :id"), {"id": user.id}
    ).scalar_one()
    secrets = {
        "password": password,
        "token": user.token,
        "form token": form.json()["access_token"],
        "password hash": hashed,
        "file content": file_content,
    }
    assert len(logs.lines) > 5
    assert _scan(logs.lines, secrets) == []
