"""Schema fuzzing: every operation, authenticated as two users, against the app's own OpenAPI.

Per operation, generated and boundary inputs (huge integers, NUL bytes, wrong JSON types, broken
encodings) must never be a server error, and every response must be documented: its status
code, content type and body schema. Stateful runs chain operations (create a task, then read,
change or delete it) as one user and replay the reads as the other: an owner's object that the
other user can read is an object-level authorization failure.
"""

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    object_level_authorization,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Connection

import auth
from config import get_settings
from db_models import User
from main import create_app
from tests import conftest
from tests.conftest import RESOURCES

# The app as served, on the suite's resources (its sessions join the module's transaction).
app = create_app(resources=RESOURCES)

# Fixed ids far above what the suite's own users get, so the tokens can be signed before
# collection (schemathesis builds its cases, credentials included, while collecting).
USERS = {"owner": 2_000_000_001, "peer": 2_000_000_002}
# A token names its account by id and creation time: both are fixed before the rows exist.
CREATED_AT = datetime(2026, 1, 1, tzinfo=UTC)
PASSWORD = "fuzzing password 1"


def _token_entry(name: str, user_id: int) -> dict[str, object]:
    token, _ = auth.create_access_token(user_id, get_settings(), created_at=CREATED_AT)
    return {"name": name, "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {token}"}]}


# Web Fuzzing Commons auth document: the identities schemathesis sends requests as.
_WFC = conftest._TMP / "fuzz-users.json"
_WFC.write_text(json.dumps({"auth": [_token_entry(n, i) for n, i in USERS.items()]}))

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20261124,
        "auth": {"wfc": {"path": str(_WFC), "peers": list(USERS)}},
        # Hypothesis's default per operation; the whole module runs in well under a minute.
        "generation": {"max-examples": 100},
    }
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
    object_level_authorization,
]


@pytest.fixture(scope="module")
def db_connection() -> Iterator[Connection]:
    """One transaction for the whole module: the two users live through every operation's run."""
    connection = RESOURCES.engine.connect()
    transaction = connection.begin()
    RESOURCES.sessions.configure(bind=connection, join_transaction_mode="create_savepoint")
    try:
        with RESOURCES.sessions() as session:
            for name, user_id in USERS.items():
                hashed = auth.hash_password(PASSWORD, get_settings())
                email = f"fuzz-{name}@example.com"
                session.add(
                    User(
                        id=user_id,
                        username=f"fuzz-{name}",
                        email=email,
                        hashed_password=hashed,
                        created_at=CREATED_AT,
                    )
                )
            session.commit()
        yield connection
    finally:
        RESOURCES.sessions.configure(bind=RESOURCES.engine)
        transaction.rollback()
        connection.close()


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_its_schema(
    case: schemathesis.Case[Any], db_connection: Connection
) -> None:
    case.call_and_validate(checks=CHECKS)


def test_workflows_conform_and_never_leak_another_users_objects(
    db_connection: Connection,
) -> None:
    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        # Each scenario starts from the same data: hypothesis replays scenarios while it
        # explores and shrinks, and one that found another's leftovers would draw differently.
        def setup(self) -> None:
            self.scenario = db_connection.begin_nested()

        def teardown(self) -> None:
            if self.scenario.is_active:
                self.scenario.rollback()

        def validate_response(
            self,
            response: schemathesis.Response,
            case: schemathesis.Case[Any],
            additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            del additional_checks
            case.validate_response(
                response, checks=CHECKS, transport_kwargs=kwargs or None, recorder=self.recorder
            )

    Workflow.run(
        settings=settings(
            max_examples=50,
            stateful_step_count=6,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )


# --- faults the fuzzer found, pinned ---------------------------------------------------------


def test_a_json_body_that_is_not_utf8_is_a_422_not_an_undocumented_400(
    db_connection: Connection,
) -> None:
    token, _ = auth.create_access_token(USERS["owner"], get_settings(), created_at=CREATED_AT)
    with TestClient(app) as client:
        response = client.post(
            "/tasks",
            content=b'{"title": "\xff\xfe"}',
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert response.json()["errors"][0]["loc"] == ["body"]
