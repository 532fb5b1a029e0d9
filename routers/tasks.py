"""Tasks: CRUD, listing with filters, tags, bulk update and statistics."""

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, BackgroundTasks, Body, Path, Query, Request, Response, status
from pydantic import AfterValidator

import background_tasks
import rate_limit_config as rate_limits
from dependencies import CacheDep, CurrentUser, DbSession, OwnedTask, SettingsDep
from exceptions import (
    EmptyUpdateError,
    TagNotFoundError,
    TasksNotFoundError,
    TooManyTagsError,
    method_guard,
)
from models import (
    MAX_TAG_LENGTH,
    TAG_PATTERN,
    BulkTaskUpdate,
    TagList,
    TaskCreate,
    TaskListParams,
    TaskRead,
    TaskStats,
    TaskUpdate,
    error_responses,
    normalize_tag,
)
from services import stats as stats_service
from services import tasks as task_service

router = APIRouter(prefix="/tasks")

_LIST_HEADERS = {
    "X-Total-Count": {
        "description": "How many tasks match the filters, before paging.",
        "schema": {"type": "integer"},
    },
    "Link": {
        "description": 'RFC 8288 links to the `rel="next"` and `rel="prev"` pages, when they exist.',
        "schema": {"type": "string"},
    },
}
_LOCATION_HEADER = {
    "Location": {
        "description": "The URL of the new task.",
        "schema": {"type": "string", "examples": ["/tasks/17"]},
    }
}
_STATS_HEADERS = {
    "X-Cache": {
        "description": "`HIT` when served from the cache, `MISS` when computed.",
        "schema": {"type": "string", "enum": ["HIT", "MISS"]},
    }
}

PathTag = Annotated[
    str,
    Path(
        max_length=4 * MAX_TAG_LENGTH,
        pattern=None,
        description="The tag (trimmed and lower-cased).",
        json_schema_extra={"pattern": TAG_PATTERN},
    ),
    AfterValidator(normalize_tag),
]


def _set_paging_headers(
    request: Request, response: Response, params: TaskListParams, total: int
) -> None:
    response.headers["X-Total-Count"] = str(total)
    # Keep every other query parameter as the client sent it; only the window moves.
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("skip", "limit")]
    links = []
    if params.skip + params.limit < total:
        links.append((params.skip + params.limit, "next"))
    if params.skip > 0:
        links.append((max(0, min(params.skip, total) - params.limit), "prev"))
    if links:
        response.headers["Link"] = ", ".join(
            f'<{request.url.path}?{urlencode([*kept, ("skip", skip), ("limit", params.limit)])}>; rel="{rel}"'
            for skip, rel in links
        )


@router.get(
    "",
    response_model=list[TaskRead],
    responses={200: {"headers": _LIST_HEADERS}},
    tags=["tasks"],
    summary="List your tasks",
)
def list_tasks(
    params: Annotated[TaskListParams, Query()],
    user: CurrentUser,
    session: DbSession,
    request: Request,
    response: Response,
) -> Any:
    """The caller's tasks matching every filter given, a page at a time."""
    page = task_service.list_tasks(session, owner=user, params=params)
    _set_paging_headers(request, response, params, page.total)
    return page.tasks


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskRead,
    responses={201: {"headers": _LOCATION_HEADER}},
    tags=["tasks"],
    summary="Create a task",
)
@rate_limits.rate_limited(rate_limits.CREATE_TASK)
def create_task(
    data: TaskCreate, user: CurrentUser, session: DbSession, cache: CacheDep, response: Response
) -> Any:
    """Create a task owned by the caller."""
    task = task_service.create_task(session, owner=user, data=data, cache=cache)
    response.headers["Location"] = f"/tasks/{task.id}"
    return task


# /stats and /bulk are declared before /{task_id}, which would otherwise capture them.
@router.get(
    "/stats",
    response_model=TaskStats,
    responses={200: {"headers": _STATS_HEADERS}},
    tags=["tasks"],
    summary="Statistics of your tasks",
)
def get_stats(
    user: CurrentUser,
    session: DbSession,
    cache: CacheDep,
    settings: SettingsDep,
    response: Response,
) -> Any:
    """Counts of the caller's tasks: completion, overdue, by priority and by tag."""
    result = stats_service.get_stats(
        session, owner_id=user.id, cache=cache, ttl_seconds=settings.stats_cache_ttl_seconds
    )
    response.headers["X-Cache"] = "HIT" if result.cache_hit else "MISS"
    return result.stats


@router.patch(
    "/bulk",
    response_model=list[TaskRead],
    responses=error_responses(EmptyUpdateError, TasksNotFoundError),
    tags=["tasks"],
    summary="Update many tasks",
)
def bulk_update_tasks(
    data: BulkTaskUpdate,
    user: CurrentUser,
    session: DbSession,
    cache: CacheDep,
    background: BackgroundTasks,
) -> Any:
    """Apply one update to many of your tasks: all or nothing, answered in request order."""
    result = task_service.bulk_update(session, owner=user, data=data, cache=cache)
    # Background tasks run only after a successful response, so never for a failed update.
    if result.newly_completed_ids:
        background.add_task(background_tasks.notify_tasks_completed, result.newly_completed_ids)
    return result.tasks


# `/{task_id}` would capture the other methods of these literal paths (a 422 for the id
# "stats"): they are a 405 naming the methods the path has. Declared before `/{task_id}`.
_ALL_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}
router.add_api_route(
    "/stats", method_guard(), methods=sorted(_ALL_METHODS - {"GET"}), include_in_schema=False
)
router.add_api_route(
    "/bulk", method_guard(), methods=sorted(_ALL_METHODS - {"PATCH"}), include_in_schema=False
)


@router.get("/{task_id}", response_model=TaskRead, tags=["tasks"], summary="Read a task")
async def get_task(task: OwnedTask) -> Any:
    """One of the caller's tasks."""
    return task


@router.patch(
    "/{task_id}",
    response_model=TaskRead,
    responses=error_responses(EmptyUpdateError),
    tags=["tasks"],
    summary="Update a task",
)
def update_task(
    task: OwnedTask,
    data: TaskUpdate,
    session: DbSession,
    cache: CacheDep,
    background: BackgroundTasks,
) -> Any:
    """Change some fields of a task; only the fields sent are changed."""
    # Background tasks run only after a successful response, so never for a failed update.
    if data.completed and not task.completed:
        background.add_task(background_tasks.notify_task_completed, task.id)
    return task_service.update_task(session, task=task, data=data, cache=cache)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    tags=["tasks"],
    summary="Delete a task",
)
def delete_task(
    task: OwnedTask, session: DbSession, cache: CacheDep, background: BackgroundTasks
) -> None:
    """Delete a task with its tags and files; the files' bytes are removed after the response."""
    stored = task_service.delete_task(session, task=task, cache=cache)
    background.add_task(background_tasks.remove_stored_files, stored)


@router.post(
    "/{task_id}/tags",
    response_model=TaskRead,
    responses=error_responses(TooManyTagsError),
    tags=["tags"],
    summary="Add tags to a task",
)
def add_tags(
    task: OwnedTask,
    tags: Annotated[TagList, Body(examples=[["work", "urgent"]])],
    session: DbSession,
    cache: CacheDep,
) -> Any:
    """Add tags to a task (a bare JSON array); tags it already has are ignored."""
    return task_service.add_tags(session, task=task, tags=tags, cache=cache)


@router.delete(
    "/{task_id}/tags/{tag}",
    response_model=TaskRead,
    responses=error_responses(TagNotFoundError),
    tags=["tags"],
    summary="Remove a tag from a task",
)
def remove_tag(task: OwnedTask, tag: PathTag, session: DbSession, cache: CacheDep) -> Any:
    """Remove one tag from a task."""
    return task_service.remove_tag(session, task=task, tag=tag, cache=cache)
