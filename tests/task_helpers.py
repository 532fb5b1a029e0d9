"""Helpers for the task tests: creating tasks quickly and counting SQL statements."""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Connection, event, select, update

from db_models import Task, TaskFile, TaskTag
from enums import Priority
from tests.conftest import RESOURCES, AuthUser


def create_task(client: TestClient, user: AuthUser, **fields: Any) -> dict[str, Any]:
    """Create a task through the API and return its JSON."""
    body = {"title": "A task", **fields}
    response = client.post("/tasks", json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


def insert_tasks(
    owner_id: int,
    count: int,
    *,
    tags: Sequence[str] = (),
    due_date: date | None = None,
    completed: bool = False,
) -> list[int]:
    """Insert many tasks straight into the database (fast setup for large lists)."""
    with RESOURCES.sessions() as session:
        tasks = [
            Task(
                user_id=owner_id,
                title=f"Task {n}",
                priority=Priority.MEDIUM,
                due_date=due_date,
                completed=completed,
                tag_rows=[TaskTag(tag=tag, user_id=owner_id) for tag in tags],
            )
            for n in range(count)
        ]
        session.add_all(tasks)
        session.commit()
        return [task.id for task in tasks]


def upload_file(client: TestClient, user: AuthUser, task_id: int, name: str, content: bytes) -> int:
    """Attach a file to a task through the API and return its id."""
    response = client.post(
        f"/tasks/{task_id}/files", files={"file": (name, content)}, headers=user.headers
    )
    assert response.status_code == 201, response.text
    file_id: int = response.json()["id"]
    return file_id


def stored_key(connection: Connection, file_id: int) -> str:
    """The storage key a file's bytes are kept under."""
    key = connection.scalar(select(TaskFile.stored_filename).where(TaskFile.id == file_id))
    assert key is not None
    return key


def set_timestamps(task_id: int, **timestamps: datetime) -> None:
    """Backdate `created_at` / `updated_at` of a task, which the API never lets a client set."""
    with RESOURCES.sessions() as session:
        session.execute(update(Task).where(Task.id == task_id).values(**timestamps))
        session.commit()


@dataclass
class StatementLog:
    statements: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.statements)

    @property
    def queries(self) -> list[str]:
        """The statements but the savepoints each session of a test runs in (the test's
        outer transaction), which production never sends."""
        harness = ("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")
        return [s for s in self.statements if not s.startswith(harness)]


@contextmanager
def count_statements(connection: Connection) -> Iterator[StatementLog]:
    """Record every SQL statement sent on the test connection (all requests use it)."""
    log = StatementLog()

    def record(*args: Any) -> None:
        log.statements.append(str(args[2]))

    event.listen(connection, "before_cursor_execute", record)
    try:
        yield log
    finally:
        event.remove(connection, "before_cursor_execute", record)
