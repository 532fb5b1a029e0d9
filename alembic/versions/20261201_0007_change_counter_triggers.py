"""The database raises the per-user change counters: triggers on `tasks`.

Every statement that inserts, updates or deletes a user's tasks raises that user's row in
`user_change_counters` (created at 1) within the statement itself, so a write no longer needs a
round trip of its own for it, and no future write path can forget it. Tag writes always update
their task's row (its version and `updated_at`), so they are covered too.

PostgreSQL: one statement-level trigger per event, reading the transition table, so a bulk
update raises each counter once, after the statement has locked all of its task rows (the
counter stays the last lock a write takes). SQLite: row-level triggers (a writer holds the
database's write lock anyway).

Counters are only written for users that still exist: deleting an account deletes its tasks
by cascade, after its user row.

SQLite rebuilds a table for most ALTERs (a "batch" migration): a later migration that rebuilds
`tasks` must create these triggers again (`tests/test_migrations.py` checks they exist at head).

Revision ID: 0007_change_counter_triggers
Revises: 0006_accounts
Create Date: 2026-12-01

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007_change_counter_triggers"
down_revision: str | None = "0006_accounts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVENTS = ("insert", "update", "delete")

POSTGRESQL_FUNCTION = """
CREATE FUNCTION raise_change_counters() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO user_change_counters AS current (user_id, counter)
    SELECT DISTINCT changed.user_id, 1
    FROM changed JOIN users ON users.id = changed.user_id
    ORDER BY changed.user_id
    ON CONFLICT (user_id) DO UPDATE SET counter = current.counter + 1;
    RETURN NULL;
END
$$
"""

# The row a SQLite trigger names: the new one, or the old one of a delete.
_SQLITE_ROW = {"insert": "NEW", "update": "NEW", "delete": "OLD"}


def _name(event: str) -> str:
    return f"tasks_{event}_raises_change_counter"


def _postgresql_trigger(event: str) -> str:
    table = "OLD" if event == "delete" else "NEW"
    return (
        f"CREATE TRIGGER {_name(event)} AFTER {event.upper()} ON tasks "
        f"REFERENCING {table} TABLE AS changed "
        "FOR EACH STATEMENT EXECUTE FUNCTION raise_change_counters()"
    )


def _sqlite_trigger(event: str) -> str:
    row = _SQLITE_ROW[event]
    return (
        f"CREATE TRIGGER {_name(event)} AFTER {event.upper()} ON tasks BEGIN "
        "INSERT INTO user_change_counters (user_id, counter) "
        f"SELECT {row}.user_id, 1 WHERE EXISTS (SELECT 1 FROM users WHERE id = {row}.user_id) "
        "ON CONFLICT (user_id) DO UPDATE SET counter = counter + 1; "
        "END"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRESQL_FUNCTION)
        for event in EVENTS:
            op.execute(_postgresql_trigger(event))
    else:
        for event in EVENTS:
            op.execute(_sqlite_trigger(event))


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for event in EVENTS:
        op.execute(f"DROP TRIGGER {_name(event)}" + (" ON tasks" if postgresql else ""))
    if postgresql:
        op.execute("DROP FUNCTION raise_change_counters()")
