"""Task CRUD."""

from typing import Any

from fastapi import APIRouter, Response, status

from dependencies import CurrentUser, DbSession, OwnedTask
from models import TaskCreate, TaskRead, TaskUpdate, error_responses
from services import tasks as task_service

router = APIRouter(prefix="/tasks", tags=["tasks"], responses=error_responses(401))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskRead,
    responses=error_responses(422),
)
def create_task(data: TaskCreate, user: CurrentUser, session: DbSession, response: Response) -> Any:
    """Create a task owned by the caller."""
    task = task_service.create_task(session, owner=user, data=data)
    response.headers["Location"] = f"/tasks/{task.id}"
    return task


@router.get("/{task_id}", response_model=TaskRead, responses=error_responses(404, 422))
def get_task(task: OwnedTask) -> Any:
    """One of the caller's tasks."""
    return task


@router.patch("/{task_id}", response_model=TaskRead, responses=error_responses(400, 404, 422))
def update_task(task: OwnedTask, data: TaskUpdate, session: DbSession) -> Any:
    """Change some fields of a task; only the fields sent are changed."""
    return task_service.update_task(session, task=task, data=data)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404, 422),
)
def delete_task(task: OwnedTask, session: DbSession) -> None:
    """Delete a task with its tags and files."""
    task_service.delete_task(session, task=task)
