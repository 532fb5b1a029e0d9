"""Ids are never given twice: users, tasks and task files get AUTOINCREMENT on SQLite.

Without AUTOINCREMENT SQLite gives a new row the highest id + 1, so deleting the newest row
frees its id for the next one (a token naming user 7 would then name the next user 7).
SQLite cannot add AUTOINCREMENT to a table, so each table is rebuilt (batch mode), keeping
every row. PostgreSQL's serial sequences never go back: nothing to do there.

The rebuild drops and renames tables: with foreign keys enforced, dropping `users` would
cascade-delete every task. Alembic's own connection leaves them off (`make migrate`); a
connection that enforces them may migrate only empty tables.

Revision ID: 0003_ids
Revises: 0002_task_search
Create Date: 2026-12-01

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_ids"
down_revision: str | None = "0002_task_search"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("users", "tasks", "task_files")


def _definitions() -> dict[str, sa.Table]:
    """The tables as migration 0001 made them, given to batch mode instead of reflecting.

    Reflection on SQLite cannot see the expression index on lower(username); it is rebuilt
    by hand below.
    """
    metadata = sa.MetaData()
    users = sa.Table(
        "users",
        metadata,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=50), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("hashed_password", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("email", name="uq_users_email"),
    )
    tasks = sa.Table(
        "tasks",
        metadata,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("completed", sa.Boolean(), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_tasks_user_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.Index("ix_tasks_user_id_id", "user_id", "id"),
        sa.Index("ix_tasks_user_id_priority", "user_id", "priority", "id"),
        sa.Index("ix_tasks_user_id_due_date", "user_id", "due_date", "id"),
        sa.Index("ix_tasks_user_id_created_at", "user_id", "created_at", "id"),
        sa.Index("ix_tasks_user_id_completed", "user_id", "completed", "id"),
    )
    task_files = sa.Table(
        "task_files",
        metadata,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("original_filename", sa.String(length=255), nullable=False),
        sa.Column("stored_filename", sa.String(length=64), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("file_size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_task_files_task_id_tasks", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_task_files_user_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_task_files"),
        sa.UniqueConstraint("stored_filename", name="uq_task_files_stored_filename"),
        sa.Index("ix_task_files_task_id", "task_id"),
        sa.Index("ix_task_files_user_id", "user_id"),
    )
    return {table.name: table for table in (users, tasks, task_files)}


def _refuse_to_cascade(connection: sa.Connection) -> None:
    if not connection.exec_driver_sql("PRAGMA foreign_keys").scalar():
        return
    # The pragma is ignored inside a transaction, and alembic runs in one: check instead.
    for table in _TABLES:
        if connection.exec_driver_sql(f"SELECT 1 FROM {table} LIMIT 1").first():  # noqa: S608
            raise RuntimeError(
                "Rebuilding the tables with foreign keys enforced would delete rows by cascade: "
                "run this migration on a connection with PRAGMA foreign_keys=OFF "
                "(as `alembic upgrade head` / `make migrate` does)"
            )


def _rebuild(autoincrement: bool) -> None:
    context = op.get_context()
    if context.dialect.name != "sqlite":
        return
    # Offline (--sql) there is nothing to ask: the script is all there is.
    online = not context.as_sql
    if online:
        _refuse_to_cascade(op.get_bind())
    definitions = _definitions()
    for name in _TABLES:
        with op.batch_alter_table(
            name,
            recreate="always",
            copy_from=definitions[name],
            table_kwargs={"sqlite_autoincrement": autoincrement},
        ):
            pass
    # Dropped with the old users table; batch mode cannot copy an expression index.
    op.create_index(
        "uq_users_username_lower", "users", [sa.text("lower(username)")], unique=True
    )
    if online:
        broken = op.get_bind().exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"Foreign keys broken by the rebuild: {len(broken)} row(s)")


def upgrade() -> None:
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)
