"""Trigram indexes for the case-insensitive substring search of GET /tasks (PostgreSQL only).

`search` is `title ILIKE '%…%' OR description ILIKE '%…%'`: a B-tree cannot serve a pattern
with a leading wildcard, a pg_trgm GIN index can. Other databases get nothing here: the search
still works there, by scanning only the caller's rows (every listing query starts with user_id).

Revision ID: 0002_task_search
Revises: 0001
Create Date: 2026-11-24

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002_task_search"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TRIGRAM_INDEXES = {"ix_tasks_title_trgm": "title", "ix_tasks_description_trgm": "description"}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # pg_trgm is a trusted extension (PostgreSQL 13+): the database owner may create it.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for name, column in _TRIGRAM_INDEXES.items():
        op.create_index(
            name,
            "tasks",
            [column],
            postgresql_using="gin",
            postgresql_ops={column: "gin_trgm_ops"},
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in _TRIGRAM_INDEXES:
        op.drop_index(name, table_name="tasks")
    # The extension stays: other objects in the database may use it.
