"""Conditional requests over HTTP: ETag headers, If-Match on writes, If-None-Match on reads.

The comparisons live in `etags.py`; this module is what routes depend on. Its dependencies
answer errors in the contract's order: authentication, then ownership (404), then the
precondition (428 / 412).
"""

from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Request, Response

import etags
from db_models import Task
from dependencies import CurrentUser, DbSession, SettingsDep, TaskId
from exceptions import (
    PreconditionFailedError,
    PreconditionRequiredError,
    TaskNotFoundError,
    raises,
)
from services import stats as stats_service
from services import tasks as task_service

IfMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description="Change the task only if its current `ETag` is one of these (strong "
        'comparison; `*` matches any version), e.g. `"3f2a9c0d1e4b5a6978c1d2e3"`. '
        "Otherwise 412 with the current `ETag`, and nothing changes.",
    ),
]
IfNoneMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        description="The `ETag` you hold (or `*`): 304 with no body while it is still current.",
    ),
]

ETAG_HEADER = {
    "ETag": {
        "description": "The entity tag of what was answered; send it back in `If-None-Match` "
        "(reads) or `If-Match` (writes).",
        "schema": {"type": "string"},
    }
}
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {
        "description": "Not Modified: the `If-None-Match` tag is current; no body.",
        "headers": ETAG_HEADER,
    }
}


@raises(TaskNotFoundError, PreconditionFailedError, PreconditionRequiredError)
def get_task_for_write(
    task_id: TaskId,
    user: CurrentUser,
    session: DbSession,
    settings: SettingsDep,
    if_match: IfMatchHeader = None,
) -> Task:
    """The caller's task, locked for this write, after its If-Match precondition held."""
    task = task_service.get_owned_task(session, owner_id=user.id, task_id=task_id, for_update=True)
    task_service.check_if_match(task, if_match=if_match, required=settings.require_if_match)
    return task


WritableTask = Annotated[Task, Depends(get_task_for_write)]


def not_modified(etag: str, if_none_match: str | None) -> Response | None:
    """304 (no body, and the tag the client may keep using) when `If-None-Match` names the
    current tag; otherwise None: the caller answers in full."""
    if if_none_match is None or not etags.weak_match(if_none_match, etag):
        return None
    return Response(status_code=304, headers={"ETag": etag})


def tag_or_not_modified(
    response: Response, etag: str, if_none_match: str | None
) -> Response | None:
    """A 304 when the client's tag is current; otherwise None, with the tag on `response`."""
    if (unchanged := not_modified(etag, if_none_match)) is None:
        response.headers["ETag"] = etag
    return unchanged


_Tagged = TypeVar("_Tagged", bound=etags.Versioned)


def with_task_etag(response: Response, task: _Tagged) -> _Tagged:
    """Send the task's current tag with the response that carries it."""
    response.headers["ETag"] = etags.task_etag(task)
    return task


def collection_etag(request: Request, *, kind: str, owner_id: int, counter: int) -> str:
    """The weak tag of a list or summary of the owner's tasks, for this query string and day."""
    return etags.collection_etag(
        kind=kind,
        user_id=owner_id,
        counter=counter,
        query_string=request.scope.get("query_string", b""),
        today=stats_service.utc_today(),
    )


def collection_not_modified(
    request: Request, *, kind: str, owner_id: int, counter: int, if_none_match: str | None
) -> Response | None:
    """A 304 when the client's tag of the owner's list or summary is the one at `counter`.

    None when there is no If-None-Match or it names another tag: the caller then answers in
    full and tags the answer with the counter it reads along with it.
    """
    if if_none_match is None:
        return None
    etag = collection_etag(request, kind=kind, owner_id=owner_id, counter=counter)
    return not_modified(etag, if_none_match)
