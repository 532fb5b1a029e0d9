"""Tasks: every query on tasks and their tags, always scoped by the owner."""

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db_models import Task, TaskFile, TaskTag, User, utcnow
from exceptions import EmptyUpdateError, NotFoundError
from models import TaskCreate, TaskUpdate


class TaskNotFoundError(NotFoundError):
    code = "task_not_found"

    def __init__(self, task_id: int) -> None:
        super().__init__(f"Task {task_id} not found")


def get_owned_task(session: Session, *, owner_id: int, task_id: int) -> Task:
    """The caller's task; another user's task is indistinguishable from a missing one."""
    task = session.scalar(select(Task).where(Task.id == task_id, Task.user_id == owner_id))
    if task is None:
        raise TaskNotFoundError(task_id)
    return task


def list_tasks(session: Session, *, owner: User, skip: int, limit: int) -> tuple[list[Task], int]:
    """One page of the caller's tasks by id, and how many there are in all."""
    scope = select(Task).where(Task.user_id == owner.id)
    total = session.scalar(select(func.count()).select_from(scope.subquery())) or 0
    page = session.scalars(scope.order_by(Task.id).offset(skip).limit(limit)).all()
    return list(page), total


def replace_tags(task: Task, tags: Iterable[str]) -> None:
    """Make the task's tags exactly `tags` (already normalized), keeping unchanged rows."""
    wanted = list(dict.fromkeys(tags))
    current = {row.tag: row for row in task.tag_rows}
    task.tag_rows = [current.get(tag) or TaskTag(tag=tag, user_id=task.user_id) for tag in wanted]


def create_task(session: Session, *, owner: User, data: TaskCreate) -> Task:
    """Create a task owned by the caller."""
    task = Task(
        user_id=owner.id,
        title=data.title,
        description=data.description,
        priority=data.priority,
        due_date=data.due_date,
        completed=data.completed,
    )
    replace_tags(task, data.tags)
    session.add(task)
    session.flush()
    return task


def apply_changes(task: Task, changes: dict[str, Any]) -> None:
    """Set the given fields on a task; `tags` replaces the whole tag set."""
    for field, value in changes.items():
        if field == "tags":
            replace_tags(task, value)
        else:
            setattr(task, field, value)
    task.updated_at = utcnow()


def update_task(session: Session, *, task: Task, data: TaskUpdate) -> Task:
    """Change the fields the client sent; an empty update is a 400."""
    changes = data.changes()
    if not changes:
        raise EmptyUpdateError()
    apply_changes(task, changes)
    session.flush()
    return task


def delete_task(session: Session, *, task: Task) -> list[str]:
    """Delete a task; its tags and file rows go with it by database cascade.

    Returns the stored names of its files, whose bytes the caller removes after the commit.
    """
    # The task row is locked as an upload locks it, so no file is attached after this read.
    names = session.scalars(
        select(TaskFile.stored_filename)
        .select_from(Task)
        .outerjoin(TaskFile, TaskFile.task_id == Task.id)
        .where(Task.id == task.id)
        .with_for_update(of=Task)
    ).all()
    session.delete(task)
    session.flush()
    return [name for name in names if name is not None]
