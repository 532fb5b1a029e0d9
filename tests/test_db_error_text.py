"""Database errors never carry row values, so no log line or traceback can leak user data."""

import traceback
import uuid

import pytest
from sqlalchemy import Connection, insert
from sqlalchemy.exc import IntegrityError

from db_models import User, utcnow


def test_a_unique_violation_names_the_constraint_but_not_the_value(
    db_connection: Connection,
) -> None:
    secret = f"private-{uuid.uuid4().hex}@example.com"
    row = {"email": secret, "hashed_password": "h", "created_at": utcnow()}
    db_connection.execute(insert(User).values(username="first", **row))
    savepoint = db_connection.begin_nested()
    with pytest.raises(IntegrityError) as caught:
        db_connection.execute(insert(User).values(username="second", **row))
    savepoint.rollback()

    # What the catch-all 500 handler logs: the message and the whole chain of causes.
    logged = "".join(traceback.format_exception(caught.value))
    assert "email" in logged  # still says what went wrong
    assert secret not in logged
    assert "DETAIL" not in logged
