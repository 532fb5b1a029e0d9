"""Every operation documents exactly the errors its code can raise, each with its real message.

"Can raise" is read from the code itself, not from the declarations the document is built from:
the source of each route's endpoint and dependencies is parsed, and every call is followed
through the project's own functions and classes, collecting each `AppError` subclass that is
built on the way. A `raise` added to a service without declaring it on its routes fails here.
The errors no source line builds (invalid input, a spent rate limit, a database down, an
unexpected failure, a body over the limit) come from the handlers, by the rules listed below.
"""

import ast
import inspect
import re
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from fastapi.testclient import TestClient

import exceptions
from config import PROJECT_DIR
from db_config import get_db
from exceptions import (
    EXAMPLE_REQUEST_ID,
    AppError,
    BodyTooLargeError,
    DatabaseUnavailableError,
    InternalError,
    RateLimitedError,
    ValidationFailedError,
)
from main import app
from openapi_schema import declares_scopes, is_rate_limited
from rate_limit_config import dependency_calls
from tests.conftest import AuthUser
from tests.task_helpers import create_task

PROBLEM = "application/problem+json"
ERROR_CLASSES = [
    value
    for value in vars(exceptions).values()
    if isinstance(value, type) and issubclass(value, AppError) and value is not AppError
]


def _is_project_code(value: object) -> bool:
    module = inspect.getmodule(value)
    path = getattr(module, "__file__", None) or ""
    return path.startswith(str(PROJECT_DIR)) and "/.venv/" not in path and "/tests/" not in path


def _resolve(node: ast.expr, scope: dict[str, Any]) -> object:
    if isinstance(node, ast.Name):
        return scope.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, scope)
        return getattr(base, node.attr, None) if base is not None else None
    return None


class _Reachable:
    """The `AppError` classes a callable builds, following calls through project code."""

    def __init__(self) -> None:
        self.errors: set[type[AppError]] = set()
        self._seen: set[int] = set()

    def visit(self, value: object) -> None:
        value = inspect.unwrap(value) if callable(value) else value
        if isinstance(value, type) and issubclass(value, AppError):
            if value is not AppError:
                self.errors.add(value)
            return
        if id(value) in self._seen or not callable(value) or not _is_project_code(value):
            return
        self._seen.add(id(value))
        if isinstance(value, type):
            # A class the code builds: any of its methods may run (its instances are called
            # through local names the scan cannot follow).
            for member in vars(value).values():
                self.visit(getattr(member, "__func__", member))
            return
        if not inspect.isfunction(value):
            return
        owner = value.__globals__.get(value.__qualname__.split(".")[0])
        if isinstance(owner, type) and owner.__name__ != value.__name__:
            self.visit(owner)
        try:
            source = inspect.getsource(value)
        except OSError:
            return  # generated code (a dataclass's __init__): nothing of ours
        scope = {**vars(inspect.getmodule(value)), **_closure(value)}
        tree = ast.parse(textwrap.dedent(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for target in (node.func, *node.args):
                    resolved = _resolve(target, scope)
                    if resolved is not None:
                        self.visit(resolved)


def _closure(function: Callable[..., Any]) -> dict[str, Any]:
    names = function.__code__.co_freevars
    cells = function.__closure__ or ()
    return {name: cell.cell_contents for name, cell in zip(names, cells, strict=True)}


def _routes() -> Iterator[tuple[str, RouteContext]]:
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute) and route.include_in_schema:
            for method in sorted(route.methods or ()):
                yield f"{method} {route.path_format}", route


def can_raise(route: RouteContext, operation: dict[str, Any]) -> set[type[AppError]]:
    calls = list(dependency_calls(route.dependant))
    scan = _Reachable()
    for call in [route.endpoint, *calls]:
        scan.visit(call)
    errors = scan.errors
    if route.max_body_size is not None:
        # The route lifts the body cap (an upload bounds its own stream): never a body_too_large.
        errors.discard(BodyTooLargeError)
    if not declares_scopes(route.dependant):
        # The authentication checks the scopes the route declares; with none it never refuses.
        errors.discard(exceptions.InsufficientScopeError)
    # Raised by FastAPI, slowapi, SQLAlchemy or anything unexpected; rendered by the handlers.
    if operation.get("parameters") or operation.get("requestBody"):
        errors.add(ValidationFailedError)
    if is_rate_limited(route):
        errors.add(RateLimitedError)
    if get_db in calls:
        errors.add(DatabaseUnavailableError)
    errors.add(InternalError)
    return errors


def documented(operation: dict[str, Any]) -> set[type[AppError]]:
    by_example = {(error.status_code, error.example_key()): error for error in ERROR_CLASSES}
    errors = set()
    for status, response in operation["responses"].items():
        for key in response.get("content", {}).get(PROBLEM, {}).get("examples", {}):
            errors.add(by_example[(int(status), key)])
    return errors


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    document: dict[str, Any] = app.openapi()
    return document


@pytest.mark.parametrize(("name", "route"), list(_routes()), ids=[name for name, _ in _routes()])
def test_documented_errors_are_exactly_those_the_code_can_raise(
    spec: dict[str, Any], name: str, route: RouteContext
) -> None:
    method, path = name.split(" ", 1)
    operation = spec["paths"][path][method.lower()]
    names = {error.__name__ for error in documented(operation)}
    expected = {error.__name__ for error in can_raise(route, operation)}
    assert (sorted(names - expected), sorted(expected - names)) == ([], [])


def test_the_scan_finds_an_undeclared_raise() -> None:
    from services import tasks as task_service

    scan = _Reachable()
    scan.visit(task_service.bulk_update)
    assert exceptions.TasksNotFoundError in scan.errors
    assert exceptions.EmptyUpdateError in scan.errors


def test_every_error_sets_its_own_status_and_code() -> None:
    with pytest.raises(TypeError, match="must set status_code and code"):
        type("Vague", (AppError,), {})
    for error in ERROR_CLASSES:
        assert "status_code" in vars(error), error
        assert "code" in vars(error), error
    keys = [error.example_key() for error in ERROR_CLASSES]
    assert len(keys) == len(set(keys)), "each error needs its own example_name"


def test_no_call_site_picks_a_code() -> None:
    # Codes belong to the classes: `SomeError(..., code="x")` is the old way, gone.
    offenders = []
    for path in PROJECT_DIR.rglob("*.py"):
        if {".venv", "tests", "alembic"} & set(path.relative_to(PROJECT_DIR).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and ast.unparse(node.func).endswith("Error")
                and any(keyword.arg == "code" for keyword in node.keywords)
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


# --- the examples are the real messages -------------------------------------------------------


def _example(spec: dict[str, Any], method: str, path: str, status: int, key: str) -> Any:
    response = spec["paths"][path][method]["responses"][str(status)]
    return response["content"][PROBLEM]["examples"][key]["value"]


def _masked(body: dict[str, Any]) -> str:
    # Ids and limits differ between the example and this run; the words may not.
    body = {key: value for key, value in body.items() if key != "request_id"}
    text = re.sub(r"\b[0-9a-f]{16,}\b", "HEX", repr(sorted(body.items())))  # entity tags
    return re.sub(r"\d+", "N", text)


def _login_form(fields: int) -> dict[str, str]:
    return {f"field{n}": "x" for n in range(fields)}


def test_each_example_is_the_message_the_server_sends(
    client: TestClient, spec: dict[str, Any], alice: AuthUser, bob: AuthUser
) -> None:
    task = create_task(client, alice, title="Report")
    full = create_task(client, alice, title="Full", tags=[f"t{n}" for n in range(20)])
    tid = task["id"]
    created = client.post(
        "/auth/tokens",
        json={"name": "files", "scopes": ["files:read"], "expires_in_days": 1},
        headers=alice.headers,
    )
    files_only = created.json()["token"]
    keyed = {**alice.headers, "Idempotency-Key": "k1"}
    assert client.post("/tasks", json={"title": "first"}, headers=keyed).status_code == 201
    cases: list[tuple[str, str, str, int, str, Callable[[], Any]]] = [
        ("post", "/auth/register", "duplicate_username", 409, "duplicate_username",
         lambda: client.post("/auth/register", json={"username": "alice", "email": "a@b.co", "password": "long enough 1"})),
        ("post", "/auth/register", "duplicate_email", 409, "duplicate_email",
         lambda: client.post("/auth/register", json={"username": "carol", "email": alice.email, "password": "long enough 1"})),
        ("post", "/auth/login", "invalid_credentials", 401, "invalid_credentials",
         lambda: client.post("/auth/login", json={"username": "alice", "password": "wrong password"})),
        ("post", "/auth/login", "bad_request", 400, "bad_request",
         lambda: client.post("/auth/login", data=_login_form(17))),
        ("get", "/auth/me", "not_authenticated", 401, "not_authenticated",
         lambda: client.get("/auth/me")),
        ("get", "/auth/me", "invalid_token", 401, "invalid_token",
         lambda: client.get("/auth/me", headers={"Authorization": "Bearer nope"})),
        ("post", "/tasks", "validation_error", 422, "validation_error",
         lambda: client.post("/tasks", json={}, headers=alice.headers)),
        ("get", "/tasks", "body_too_large", 413, "body_too_large",
         lambda: client.get("/tasks", headers={**alice.headers, "Content-Length": str(2**21)})),
        ("get", "/tasks/{task_id}", "task_not_found", 404, "task_not_found",
         lambda: client.get(f"/tasks/{tid}", headers=bob.headers)),
        ("patch", "/tasks/{task_id}", "empty_update", 400, "empty_update",
         lambda: client.patch(f"/tasks/{tid}", json={}, headers=alice.headers)),
        ("patch", "/tasks/bulk", "tasks_not_found", 404, "task_not_found",
         lambda: client.patch("/tasks/bulk", json={"task_ids": [tid, tid + 1000, tid + 2000], "updates": {"completed": True}}, headers=alice.headers)),
        ("delete", "/tasks/{task_id}/tags/{tag}", "tag_not_found", 404, "tag_not_found",
         lambda: client.delete(f"/tasks/{tid}/tags/urgent", headers=alice.headers)),
        ("post", "/tasks/{task_id}/tags", "too_many_tags", 422, "validation_error",
         lambda: client.post(f"/tasks/{full['id']}/tags", json=["one-more"], headers=alice.headers)),
        ("post", "/tasks/{task_id}/files", "unsupported_file_type", 415, "unsupported_file_type",
         lambda: client.post(f"/tasks/{tid}/files", files={"file": ("a.pdf", b"not a pdf at all")}, headers=alice.headers)),
        ("post", "/tasks/{task_id}/files", "invalid_upload", 422, "validation_error",
         lambda: client.post(f"/tasks/{tid}/files", files={"file": ("a.txt", b"")}, headers=alice.headers)),
        ("get", "/files/{file_id}", "file_not_found", 404, "file_not_found",
         lambda: client.get("/files/999999", headers=alice.headers)),
        ("post", "/auth/register", "weak_password", 422, "weak_password",
         lambda: client.post("/auth/register", json={"username": "carol", "email": "c@b.co", "password": "football"})),
        ("post", "/auth/refresh", "invalid_refresh_token", 401, "invalid_token",
         lambda: client.post("/auth/refresh", json={"refresh_token": "nope"})),
        ("post", "/auth/password", "wrong_password", 400, "wrong_password",
         lambda: client.post("/auth/password", json={"current_password": "not it at all", "new_password": "a new passphrase"}, headers=alice.headers)),
        ("post", "/auth/verify-email", "invalid_or_expired_token", 400, "invalid_or_expired_token",
         lambda: client.post("/auth/verify-email", json={"token": "nope"})),
        ("delete", "/auth/sessions/{session_id}", "session_not_found", 404, "session_not_found",
         lambda: client.delete("/auth/sessions/999999", headers=alice.headers)),
        ("delete", "/auth/tokens/{token_id}", "token_not_found", 404, "token_not_found",
         lambda: client.delete("/auth/tokens/999999", headers=alice.headers)),
        ("post", "/tasks", "insufficient_scope", 403, "insufficient_scope",
         lambda: client.post("/tasks", json={"title": "x"}, headers={"Authorization": f"Bearer {files_only}"})),
        ("post", "/tasks", "invalid_idempotency_key", 400, "invalid_idempotency_key",
         lambda: client.post("/tasks", json={"title": "x"}, headers={**alice.headers, "Idempotency-Key": "a b"})),
        ("post", "/tasks", "idempotency_key_reused", 422, "idempotency_key_reused",
         lambda: client.post("/tasks", json={"title": "other"}, headers={**alice.headers, "Idempotency-Key": "k1"})),
        ("patch", "/tasks/{task_id}", "precondition_failed", 412, "precondition_failed",
         lambda: client.patch(f"/tasks/{tid}", json={"completed": True}, headers={**alice.headers, "If-Match": '"stale"'})),
        ("patch", "/tasks/bulk", "bulk_precondition_failed", 412, "precondition_failed",
         lambda: client.patch("/tasks/bulk", json={"task_ids": [tid], "updates": {"completed": True}, "if_match": {str(tid): '"stale"'}}, headers=alice.headers)),
    ]  # fmt: skip
    for method, path, key, status, code, send in cases:
        response = send()
        where = f"{method.upper()} {path} {key}"
        assert response.status_code == status, (where, response.text)
        body = response.json()
        assert body["code"] == code, where
        example = _example(spec, method, path, status, key)
        assert _masked(body) == _masked(example), where
        assert example["request_id"] == EXAMPLE_REQUEST_ID


def test_messages_taken_from_call_sites_are_each_checked_above() -> None:
    # Every other error builds its whole message from its arguments: its example is its message.
    free_text = {
        error.__name__
        for error in ERROR_CLASSES
        if {"detail", "message"} & set(inspect.signature(error.__init__).parameters)
    }
    assert free_text == {"MalformedBodyError", "UnsupportedFileTypeError", "UploadInvalidError"}
