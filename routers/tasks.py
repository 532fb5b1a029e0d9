"""Tasks: CRUD, listing with filters, tags, bulk update and statistics."""

from functools import partial
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Body, Depends, Path, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import AfterValidator, TypeAdapter
from sqlalchemy.orm import Session

import etags
import rate_limit_config as rate_limits
from conditional import (
    ETAG_HEADER,
    NOT_MODIFIED,
    IfMatchHeader,
    IfNoneMatchHeader,
    WritableTask,
    collection_etag,
    collection_not_modified,
    not_modified,
    tag_or_not_modified,
    with_task_etag,
)
from dependencies import (
    READ_TASKS,
    WRITE_TASKS,
    CacheDep,
    CurrentUser,
    DbSession,
    ResourcesDep,
    SettingsDep,
    TaskId,
)
from exceptions import (
    BulkPreconditionFailedError,
    EmptyUpdateError,
    PreconditionFailedError,
    PreconditionRequiredError,
    TagNotFoundError,
    TaskNotFoundError,
    TasksNotFoundError,
    TooManyTagsError,
    method_guard,
)
from idempotent_requests import SUCCESS_HEADERS, Idempotency
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
    no_content,
    normalize_tag,
)
from query_models import query_model
from responses import json_response
from services import changes as change_service
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

_TASK = TypeAdapter(TaskRead)
_TASKS = TypeAdapter(list[TaskRead])
_ONE_TASK: dict[int | str, dict[str, Any]] = {200: {"headers": ETAG_HEADER}}
_KEYED_TASK: dict[int | str, dict[str, Any]] = {
    200: {"headers": {**ETAG_HEADER, **SUCCESS_HEADERS}}
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


def _paging_headers(request: Request, params: TaskListParams, total: int) -> dict[str, str]:
    headers = {"X-Total-Count": str(total)}
    # Keep every other query parameter as the client sent it; only the window moves.
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("skip", "limit")]
    links = []
    if params.skip + params.limit < total:
        links.append((params.skip + params.limit, "next"))
    if params.skip > 0:
        links.append((max(0, min(params.skip, total) - params.limit), "prev"))
    if links:
        headers["Link"] = ", ".join(
            f'<{request.url.path}?{urlencode([*kept, ("skip", skip), ("limit", params.limit)])}>; rel="{rel}"'
            for skip, rel in links
        )
    return headers


@router.get(
    "",
    response_model=list[TaskRead],
    responses={
        200: {"headers": {**_LIST_HEADERS, **ETAG_HEADER}},
        **NOT_MODIFIED,
    },
    tags=["tasks"],
    summary="List your tasks",
    dependencies=[READ_TASKS],
)
async def list_tasks(
    params: Annotated[TaskListParams, Depends(query_model(TaskListParams))],
    user: CurrentUser,
    resources: ResourcesDep,
    cache: CacheDep,
    request: Request,
    if_none_match: IfNoneMatchHeader = None,
) -> Response:
    """The caller's tasks matching every filter given, a page at a time (weak `ETag`)."""
    not_modified_at = partial(
        collection_not_modified,
        request,
        kind="tasks",
        owner_id=user.id,
        if_none_match=if_none_match,
    )
    known = None
    if if_none_match is not None:
        # A poll of an unchanged list: answered from the cached change counter, on the event
        # loop with no database at all, or else after one read of the counter.
        known = await change_service.read_cached_counter(cache, owner_id=user.id)
        if known.counter is not None and (unchanged := not_modified_at(counter=known.counter)):
            return unchanged

    today = stats_service.utc_today()
    total_key = task_service.total_key(user.id, params, today)
    cached_total = resources.list_totals.get(total_key)
    # On the event loop a count costs no thread-pool hop of its own: it runs after the page,
    # shared by the lists that need it at once. In a thread it stays in the page's one hop.
    count_with_page = not resources.reads_on_loop

    def read(session: Session) -> tuple[int | None, Response | task_service.PageRead]:
        counter = None
        if known is not None and known.counter is None:
            counter = change_service.current_counter(session, owner_id=user.id)
            if unchanged := not_modified_at(counter=counter):
                return counter, unchanged
        page = task_service.read_page(
            session,
            owner_id=user.id,
            params=params,
            today=today,
            cached_total=cached_total,
            count=count_with_page,
        )
        return counter, page

    # The database on the async driver, or in one thread-pool hop; the cache on the loop.
    counter, answer = await resources.read(read)
    if known is not None and counter is not None:
        await known.store(cache, counter)
    if isinstance(answer, Response):
        return answer
    if isinstance(answer, task_service.UncountedPage):
        count = partial(
            resources.read,
            partial(task_service.count_total, owner_id=user.id, params=params, today=today),
        )
        # Shared only by pages read at the same counter: the count then sees that counter or a
        # later one, as it would after each page on its own. An empty page carries no counter.
        counter_read = answer.change_counter
        answer = answer.counted(
            await (
                count()
                if counter_read is None
                else resources.list_counts.run((total_key, counter_read), count)
            )
        )
    task_service.store_counted_total(resources.list_totals, total_key, answer)
    headers = _paging_headers(request, params, answer.total)
    headers["ETag"] = collection_etag(
        request, kind="tasks", owner_id=user.id, counter=answer.change_counter
    )
    return json_response(_TASKS, answer.tasks, headers)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskRead,
    responses={201: {"headers": {**_LOCATION_HEADER, **ETAG_HEADER, **SUCCESS_HEADERS}}},
    tags=["tasks"],
    summary="Create a task",
    dependencies=[WRITE_TASKS],
)
@rate_limits.rate_limited(rate_limits.CREATE_TASK)
async def create_task(
    data: TaskCreate,
    user: CurrentUser,
    idempotency: Idempotency,
    session: DbSession,
    resources: ResourcesDep,
    cache: CacheDep,
    response: Response,
) -> Any:
    """Create a task owned by the caller."""

    def created(task: TaskRead) -> None:
        response.headers["Location"] = f"/tasks/{task.id}"
        with_task_etag(response, task)

    if idempotency.key is None and resources.writes_alone:
        # One statement on the event loop: no transaction, no thread-pool hop.
        task = await task_service.create_task_alone(
            resources.write_alone, owner_id=user.id, data=data, cache=cache
        )
        created(task)
        return json_response(_TASK, task, response.headers, status_code=201)

    def in_session() -> Response:
        # With a key its answer is stored in the same transaction; one hop for all of it.
        task = task_service.create_task(session, owner_id=user.id, data=data, cache=cache)
        created(task)
        answer = idempotency.respond(task, adapter=_TASK, status_code=201, response=response)
        session.commit()  # in this hop: get_db then has nothing left to commit
        return answer

    return await run_in_threadpool(in_session)


# /stats and /bulk are declared before /{task_id}, which would otherwise capture them.
@router.get(
    "/stats",
    response_model=TaskStats,
    responses={200: {"headers": {**_STATS_HEADERS, **ETAG_HEADER}}, **NOT_MODIFIED},
    tags=["tasks"],
    summary="Statistics of your tasks",
    dependencies=[READ_TASKS],
)
async def get_stats(
    user: CurrentUser,
    resources: ResourcesDep,
    cache: CacheDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    if_none_match: IfNoneMatchHeader = None,
) -> Any:
    """Counts of the caller's tasks: completion, overdue, by priority and by tag (weak `ETag`)."""
    result = await stats_service.read_stats(
        resources.read,
        owner_id=user.id,
        cache=cache,
        ttl_seconds=settings.stats_cache_ttl_seconds,
    )
    # The tag comes with the cached answer: a revalidation from the cache needs no database.
    etag = collection_etag(request, kind="stats", owner_id=user.id, counter=result.change_counter)
    if (unchanged := tag_or_not_modified(response, etag, if_none_match)) is not None:
        return unchanged
    response.headers["X-Cache"] = "HIT" if result.cache_hit else "MISS"
    return result.stats


@router.patch(
    "/bulk",
    response_model=list[TaskRead],
    responses={
        200: {"headers": SUCCESS_HEADERS},
        **error_responses(EmptyUpdateError, TasksNotFoundError, BulkPreconditionFailedError),
    },
    tags=["tasks"],
    summary="Update many tasks",
    dependencies=[WRITE_TASKS],
)
def bulk_update_tasks(
    data: BulkTaskUpdate,
    user: CurrentUser,
    idempotency: Idempotency,
    session: DbSession,
    cache: CacheDep,
    response: Response,
) -> Any:
    """Apply one update to many of your tasks: all or nothing, answered in request order."""
    result = task_service.bulk_update(session, owner_id=user.id, data=data, cache=cache)
    answer = idempotency.respond(result.updated, adapter=_TASKS, status_code=200, response=response)
    session.commit()
    return answer


# `/{task_id}` would capture the other methods of these literal paths (a 422 for the id
# "stats"): they are a 405 naming the methods the path has. Declared before `/{task_id}`.
_ALL_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}
router.add_api_route(
    "/stats", method_guard(), methods=sorted(_ALL_METHODS - {"GET"}), include_in_schema=False
)
router.add_api_route(
    "/bulk", method_guard(), methods=sorted(_ALL_METHODS - {"PATCH"}), include_in_schema=False
)


@router.get(
    "/{task_id}",
    response_model=TaskRead,
    responses={**_ONE_TASK, **NOT_MODIFIED, **error_responses(TaskNotFoundError)},
    tags=["tasks"],
    summary="Read a task",
    dependencies=[READ_TASKS],
)
async def get_task(
    task_id: TaskId,
    user: CurrentUser,
    resources: ResourcesDep,
    if_none_match: IfNoneMatchHeader = None,
) -> Response:
    """One of the caller's tasks, with its `ETag`."""

    task = await resources.read(
        partial(task_service.read_owned_task, owner_id=user.id, task_id=task_id)
    )
    etag = etags.task_etag(task)
    return not_modified(etag, if_none_match) or json_response(_TASK, task, {"ETag": etag})


@router.patch(
    "/{task_id}",
    response_model=TaskRead,
    responses={
        **_ONE_TASK,
        **error_responses(
            EmptyUpdateError,
            TaskNotFoundError,
            PreconditionFailedError,
            PreconditionRequiredError,
        ),
    },
    tags=["tasks"],
    summary="Update a task",
    dependencies=[WRITE_TASKS],
)
async def update_task(
    task_id: TaskId,
    data: TaskUpdate,
    user: CurrentUser,
    session: DbSession,
    resources: ResourcesDep,
    cache: CacheDep,
    settings: SettingsDep,
    response: Response,
    if_match: IfMatchHeader = None,
) -> Any:
    """Change some fields of a task; only the fields sent are changed."""
    changes = data.changes()
    if if_match is None and not settings.require_if_match and changes and resources.writes_alone:
        # No precondition to check: one statement on the event loop, no transaction, no hop.
        try:
            done = await task_service.update_task_alone(
                resources.write_alone, owner_id=user.id, task_id=task_id, changes=changes
            )
        except task_service.TaskUpdatedMeanwhile:
            pass  # another write landed first: the update runs in a transaction below
        else:
            if done.changed:
                await change_service.invalidate_now(cache, owner_id=user.id)
            if done.notice_job_id is not None:
                await run_in_threadpool(resources.submit_jobs, [done.notice_job_id])
            return json_response(_TASK, with_task_etag(response, done.task), response.headers)

    def in_session() -> Response:
        # The task is read, locked and checked in this one hop, then committed in it.
        result = task_service.update_task(
            session,
            owner_id=user.id,
            task_id=task_id,
            data=data,
            if_match=if_match,
            require_if_match=settings.require_if_match,
            cache=cache,
        )
        answer = json_response(_TASK, with_task_etag(response, result.updated), response.headers)
        session.commit()
        return answer

    return await run_in_threadpool(in_session)


@router.delete(
    "/{task_id}",
    **no_content(),
    tags=["tasks"],
    summary="Delete a task",
    dependencies=[WRITE_TASKS],
)
def delete_task(task: WritableTask, session: DbSession, cache: CacheDep) -> None:
    """Delete a task with its tags and files; the files' bytes are removed after the response."""
    task_service.delete_task(session, task=task, cache=cache)
    session.commit()


@router.post(
    "/{task_id}/tags",
    response_model=TaskRead,
    responses={**_KEYED_TASK, **error_responses(TooManyTagsError)},
    tags=["tags"],
    summary="Add tags to a task",
    dependencies=[WRITE_TASKS],
)
def add_tags(
    # The key first: a repeat is answered from its stored result, before any precondition.
    idempotency: Idempotency,
    task: WritableTask,
    tags: Annotated[TagList, Body(examples=[["work", "urgent"]])],
    session: DbSession,
    cache: CacheDep,
    response: Response,
) -> Any:
    """Add tags to a task (a bare JSON array); tags it already has are ignored."""
    task = task_service.add_tags(session, task=task, tags=tags, cache=cache)
    with_task_etag(response, task)
    answer = idempotency.respond(task, adapter=_TASK, status_code=200, response=response)
    session.commit()
    return answer


@router.delete(
    "/{task_id}/tags/{tag}",
    response_model=TaskRead,
    responses={**_ONE_TASK, **error_responses(TagNotFoundError)},
    tags=["tags"],
    summary="Remove a tag from a task",
    dependencies=[WRITE_TASKS],
)
def remove_tag(
    task: WritableTask, tag: PathTag, session: DbSession, cache: CacheDep, response: Response
) -> Any:
    """Remove one tag from a task."""
    task = task_service.remove_tag(session, task=task, tag=tag, cache=cache)
    answer = json_response(_TASK, with_task_etag(response, task), response.headers)
    session.commit()
    return answer
