"""Schema fuzzing: every operation, authenticated as two users, against the app's own OpenAPI.

Per operation, generated and boundary inputs (huge integers, NUL bytes, wrong JSON types, broken
encodings) must never be a server error, and every response must be documented: its status
code, content type and body schema. Stateful runs chain operations (create a task, then read,
change or delete it) as one user and replay the reads as the other: an owner's object that the
other user can read is an object-level authorization failure.
"""

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS as CHECK_REGISTRY
from schemathesis.checks import load_all_checks
from sqlalchemy import Connection

import auth
from config import get_settings
from db_models import AuthSession, User, utcnow
from main import create_app
from tests import conftest
from tests.conftest import RESOURCES

# The app as served, on the suite's resources (its sessions join the module's transaction).
app = create_app(resources=RESOURCES)

# Fixed ids far above what the suite's own users get, so the tokens can be signed before
# collection (schemathesis builds its cases, credentials included, while collecting). Each user
# has one login session, whose id is the user's.
USERS = {"owner": 2_000_000_001, "peer": 2_000_000_002}
PASSWORD = "fuzzing password 1"


def _token_entry(name: str, user_id: int) -> dict[str, object]:
    token, _ = auth.create_access_token(user_id, user_id, get_settings())
    return {"name": name, "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {token}"}]}


# Web Fuzzing Commons auth document: the identities schemathesis sends requests as.
_WFC = conftest._TMP / "fuzz-users.json"
_WFC.write_text(json.dumps({"auth": [_token_entry(n, i) for n, i in USERS.items()]}))

# What schemathesis accepts, by default, as refusing schema-violating input.
_REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429", "5XX"]
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20261124,
        "auth": {"wfc": {"path": str(_WFC), "peers": list(USERS)}},
        # Hypothesis's default per operation; the whole module runs in well under a minute.
        "generation": {"max-examples": 100},
        "operations": [
            {
                # What a file must hold (an allowed extension, content matching it, not empty)
                # is beyond what a schema can say: a schema-valid upload may still be refused.
                "include-operation-id": "upload_file",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2XX", "401", "404", "409", "413", "415", "422"]
                    }
                },
            },
            {
                # A key already used for another body is a 422 `idempotency_key_reused` (the
                # examples of one operation share the data); so is a bulk `if_match` key that is
                # not one of `task_ids`, which a schema cannot say.
                "include-operation-id": "create_task",
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": ["2XX", "409", "422"]}
                },
            },
            {
                "include-operation-id": "bulk_update_tasks",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2XX", "404", "409", "412", "422"]
                    }
                },
            },
            {
                # An If-Match naming no current tag of the task (any string is schema-valid) is
                # a 412 `precondition_failed`, and nothing changes. The precondition is decided
                # before the content is processed (RFC 9110 §13.2.1), so a stale tag is a 412
                # even when the body is invalid too.
                "include-operation-id": "update_task",
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": ["2XX", "404", "412"]},
                    "negative_data_rejection": {"expected-statuses": [*_REFUSALS, "412"]},
                },
            },
            {
                "include-operation-id": "delete_task",
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": ["2XX", "404", "412"]}
                },
            },
            {
                "include-operation-id": "remove_tag",
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": ["2XX", "404", "412"]},
                    "negative_data_rejection": {"expected-statuses": [*_REFUSALS, "412"]},
                },
            },
            {
                # A password among the most common ones, or equal to the username or e-mail, is
                # a 422 `weak_password`; an address whose domain cannot receive mail a 422 too.
                "include-operation-id": "register",
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": ["2XX", "409", "422"]}
                },
            },
            {
                "include-operation-id": "request_password_reset",
                "checks": {"positive_data_acceptance": {"expected-statuses": ["2XX", "422"]}},
            },
            {
                # The current password must be the right one (400 `wrong_password`) and the
                # new one not a weak one (422 `weak_password`).
                "include-operation-id": "change_password",
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": ["2XX", "400", "422"]}
                },
            },
            {
                "include-operation-id": "delete_account",
                "checks": {"positive_data_acceptance": {"expected-statuses": ["2XX", "400"]}},
            },
            {
                # A random token is no token the service sent: 400 `invalid_or_expired_token`.
                "include-operation-id": "verify_email",
                "checks": {"positive_data_acceptance": {"expected-statuses": ["2XX", "400"]}},
            },
            {
                "include-operation-id": "reset_password",
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": ["2XX", "400", "422"]}
                },
            },
            {
                # A random refresh token is no session's: 401 `invalid_token`.
                "include-operation-id": "refresh",
                "checks": {"positive_data_acceptance": {"expected-statuses": ["2XX", "401"]}},
            },
            {
                # A task holds at most 20 tags: adding schema-valid tags to a full task is a 422.
                "include-operation-id": "add_tags",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2XX", "401", "404", "409", "412", "422"]
                    },
                    "negative_data_rejection": {"expected-statuses": [*_REFUSALS, "412"]},
                },
            },
        ],
    }
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)

# Every check schemathesis has (`--checks all`): server errors, documented statuses, content
# types, headers and bodies, schema-valid input accepted and invalid input refused, methods a
# path lacks answered 405 with `Allow`, authentication and another user's objects.
load_all_checks()
# Every entry of the registry is a plain check function in this version (no check classes).
CHECKS: list[Any] = list(CHECK_REGISTRY.get_all())


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
                    User(id=user_id, username=f"fuzz-{name}", email=email, hashed_password=hashed)
                )
                session.flush()
                session.add(
                    AuthSession(
                        id=user_id, user_id=user_id, expires_at=utcnow() + timedelta(days=1)
                    )
                )
            session.commit()
        yield connection
    finally:
        RESOURCES.sessions.configure(bind=RESOURCES.engine)
        transaction.rollback()
        connection.close()


@pytest.fixture(autouse=True)
def _each_operation_starts_from_the_same_data(db_connection: Connection) -> Iterator[None]:
    """An operation that ends a session (logout) must not sign the next operations out."""
    operation = db_connection.begin_nested()
    yield
    if operation.is_active:
        operation.rollback()


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_its_schema(
    case: schemathesis.Case[Any], db_connection: Connection
) -> None:
    case.call_and_validate(checks=CHECKS)


# Operations that end the caller's own session: in a workflow they sign every later step out
# (a correct 401 the checks would take for a valid request refused). Each is fuzzed on its own
# by the test above, which starts every operation from the same data.
SIGNING_OUT = ["revoke_session", "logout", "delete_account"]


def test_workflows_conform_and_never_leak_another_users_objects(
    db_connection: Connection,
) -> None:
    workflows = schema.exclude(operation_id=SIGNING_OUT)

    class Workflow(workflows.as_state_machine()):  # type: ignore[misc]
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
    token, _ = auth.create_access_token(USERS["owner"], USERS["owner"], get_settings())
    with TestClient(app) as client:
        response = client.post(
            "/tasks",
            content=b'{"title": "\xff\xfe"}',
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert response.json()["errors"][0]["loc"] == ["body"]
