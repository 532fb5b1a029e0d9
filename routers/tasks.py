"""Task CRUD."""

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Query, Response, status

import background_tasks
import rate_limit_config as rate_limits
from dependencies import CurrentUser, DbSession, OwnedTask
from models import MAX_ID, TaskCreate, TaskRead, TaskUpdate, error_responses
from services import tasks as task_service

router = APIRouter(prefix="/tasks", tags=["tasks"], responses=error_responses(401))


@router.get("", response_model=list[TaskRead], responses=error_responses(422))
def list_tasks(
    user: CurrentUser,
    session: DbSession,
    response: Response,
    skip: Annotated[int, Query(ge=0, le=MAX_ID, description="Tasks to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 100,
) -> Any:
    """The caller's tasks, a page at a time; `X-Total-Count` counts them all."""
    tasks, total = task_service.list_tasks(session, owner=user, skip=skip, limit=limit)
    response.headers["X-Total-Count"] = str(total)
    return tasks


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskRead,
    responses=error_responses(422),
)
@rate_limits.rate_limited(rate_limits.CREATE_TASK)
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
def update_task(
    task: OwnedTask, data: TaskUpdate, session: DbSession, background: BackgroundTasks
) -> Any:
    """Change some fields of a task; only the fields sent are changed."""
    # Background tasks run only after a successful response, so never for a failed update.
    if data.completed and not task.completed:
        background.add_task(background_tasks.notify_task_completed, task.id)
    return task_service.update_task(session, task=task, data=data)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404, 422),
)
def delete_task(task: OwnedTask, session: DbSession, background: BackgroundTasks) -> None:
    """Delete a task with its tags and files; the files' bytes are removed after the response."""
    stored = task_service.delete_task(session, task=task)
    background.add_task(background_tasks.remove_stored_files, stored)
