"""Tasks: every query on tasks and their tags, always scoped by the owner."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any, Generic, Literal, Protocol, TypeVar, overload

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Date,
    Executable,
    Integer,
    Row,
    String,
    all_,
    bindparam,
    cast,
    delete,
    false,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, joinedload
from sqlalchemy.sql.util import ClauseAdapter

import etags
import outbox
from db_models import Task, TaskTag, utcnow
from exceptions import (
    BulkPreconditionFailedError,
    EmptyUpdateError,
    PreconditionFailedError,
    PreconditionRequiredError,
    TagNotFoundError,
    TaskNotFoundError,
    TasksNotFoundError,
    TooManyTagsError,
)
from models import (
    MAX_TAGS_PER_TASK,
    BulkTaskUpdate,
    TaskCreate,
    TaskListParams,
    TaskRead,
    TaskUpdate,
)
from redis_config import Cache
from services import changes as change_service
from services import files as file_service


def get_owned_task(
    session: Session, *, owner_id: int, task_id: int, for_update: bool = False
) -> Task:
    """The caller's task; another user's task is indistinguishable from a missing one.

    `for_update` locks the task's row (on PostgreSQL) until the transaction ends, so that a
    precondition checked against its version still holds when the write lands.
    """
    # Tags in the same round trip: a single task needs no second query for them.
    query = (
        select(Task)
        .where(Task.id == task_id, Task.user_id == owner_id)
        .options(joinedload(Task.tag_rows))
    )
    if for_update:
        # Only the task row: the tags' side of the outer join cannot be locked (nor needs to).
        query = query.with_for_update(of=Task)
    task = session.scalars(query).unique().one_or_none()
    if task is None:
        raise TaskNotFoundError(task_id)
    return task


# --- reading -------------------------------------------------------------------------------
# Reads select columns and validate them straight into the response model: no ORM instances,
# identity map or instance state, which cost most of a read's time (docs/PERFORMANCE.md).


# Reads use the tables' columns, not the mapped attributes: a Core statement skips the ORM's
# compile and loading steps.
_TASK_TABLE = Task.metadata.tables[Task.__tablename__]
_TAG_TABLE = TaskTag.metadata.tables[TaskTag.__tablename__]
_TASK = _TASK_TABLE.c
_TAG = _TAG_TABLE.c
# The columns of a task as answered (`TaskRead`, tags aside), read as plain values.
_VIEW_NAMES = tuple(name for name in TaskRead.model_fields if name != "tags")
_VIEW_COLUMNS = tuple(_TASK[name] for name in _VIEW_NAMES)


# A task's tags in one text value: "/" can never be part of a tag (models.TAG_PATTERN).
_TAG_SEPARATOR = "/"
_TAGS = (
    select(func.aggregate_strings(_TAG.tag, _TAG_SEPARATOR))
    .where(_TAG.task_id == _TASK.id)
    .correlate(_TASK_TABLE)
    .scalar_subquery()
)


def _view(columns: Iterable[Any], tags: list[str]) -> TaskRead:
    """A task as answered, from its columns (in `_VIEW_COLUMNS` order) and sorted tags."""
    return TaskRead.model_validate({**dict(zip(_VIEW_NAMES, columns, strict=True)), "tags": tags})


def _views(rows: Iterable[Any]) -> list[TaskRead]:
    """Tasks from rows of their columns and their tags joined into one value (NULL: none)."""
    return [
        _view(columns, sorted(tags.split(_TAG_SEPARATOR)) if tags else [])
        for *columns, tags in rows
    ]


# Built once, run with parameters (the busiest statement: every get and every patch).
_OWNER_ID = bindparam("owner_id", type_=Integer)
_OWNED_TASK = select(*_VIEW_COLUMNS, _TAGS).where(
    _TASK.id == bindparam("task_id", type_=Integer), _TASK.user_id == _OWNER_ID
)
_OWNED_TASK_FOR_UPDATE = _OWNED_TASK.with_for_update(of=_TASK_TABLE)


def read_owned_task(
    session: Session, *, owner_id: int, task_id: int, for_update: bool = False
) -> TaskRead:
    """The caller's task as read (one round trip, tags included); 404 like `get_owned_task`.

    `for_update` locks its row as `get_owned_task` does.
    """
    query = _OWNED_TASK_FOR_UPDATE if for_update else _OWNED_TASK
    views = _views(session.execute(query, {"task_id": task_id, "owner_id": owner_id}))
    if not views:
        raise TaskNotFoundError(task_id)
    return views[0]


# --- listing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskPage:
    tasks: list[TaskRead]
    total: int
    # The owner's change counter as of the page and its total, or older (services/changes.py).
    change_counter: int
    # The total's cache entry when it was just counted (`store_counted_total`), else None.
    counted: str | None = None


@dataclass(frozen=True)
class CountedTotal:
    """How many tasks match a list's filters, and the owner's change counter at the count."""

    total: int
    counted_at: int


@dataclass(frozen=True)
class UncountedPage:
    """A page whose total was not cached at its counter, read with `count=False`: the caller
    counts it (`count_total`) and completes the page with it (`counted`)."""

    tasks: list[TaskRead]
    # None for an empty page: no row carried the counter.
    change_counter: int | None

    def counted(self, count: CountedTotal) -> TaskPage:
        """The page with its total. Its tag names the older counter of the two reads: a client
        revalidating after a write between them gets the whole list again."""
        counter = self.change_counter
        oldest = count.counted_at if counter is None else min(counter, count.counted_at)
        entry = f"{count.counted_at} {count.total}"
        return TaskPage(tasks=self.tasks, total=count.total, change_counter=oldest, counted=entry)


_SORT_COLUMNS: dict[str, Any] = {
    "id": _TASK.id,
    "title": _TASK.title,
    "priority": _TASK.priority,
    "completed": _TASK.completed,
    "created_at": _TASK.created_at,
    "updated_at": _TASK.updated_at,
    "due_date": _TASK.due_date,
}


def _start_of_day(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# A list's statements are built once per shape (which filters are given, which order) and run
# with the request's values as parameters: building a statement and its cache key cost more
# than a tenth of a list (docs/PERFORMANCE.md). Bounded: every shape is a combination of a
# dozen choices, and the least recently used are dropped.
_SHAPES_KEPT = 512


@dataclass(frozen=True)
class _Filters:
    """Which of a list's filters are given (values aside), `completed` and `overdue` with their
    value: each of those changes the statement, not only its parameters."""

    completed: bool | None
    priority: bool
    tags: bool
    overdue: bool | None
    search: bool
    due_before: bool
    due_after: bool
    created_after: bool
    created_before: bool


def _filters_of(params: TaskListParams) -> _Filters:
    return _Filters(
        completed=params.completed,
        priority=params.priority is not None,
        tags=bool(params.tag),
        overdue=params.overdue,
        search=bool(params.search),
        due_before=params.due_before is not None,
        due_after=params.due_after is not None,
        created_after=params.created_after is not None,
        # Created on or before the last day there is: every task, no condition.
        created_before=params.created_before is not None and params.created_before < date.max,
    )


def _filter_values(
    filters: _Filters, owner_id: int, params: TaskListParams, today: date
) -> dict[str, Any]:
    """The parameters of the statements `_conditions(filters)` builds, from the request."""
    values: dict[str, Any] = {"owner_id": owner_id}
    if filters.priority:
        values["priority"] = params.priority
    if filters.tags:
        values["tags"] = params.tag
        values["tag_count"] = len(params.tag)
    if filters.overdue is not None:
        values["today"] = today
    if filters.search:
        values["pattern"] = _like_pattern(params.search or "")
    if filters.due_before:
        values["due_before"] = params.due_before
    if filters.due_after:
        values["due_after"] = params.due_after
    if filters.created_after and params.created_after is not None:
        values["created_from"] = _start_of_day(params.created_after)
    if filters.created_before and params.created_before is not None:
        values["created_until"] = _start_of_day(params.created_before + timedelta(days=1))
    return values


def _conditions(filters: _Filters) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [_TASK.user_id == _OWNER_ID]
    if filters.completed is not None:
        conditions.append(_TASK.completed == (true() if filters.completed else false()))
    if filters.priority:
        conditions.append(_TASK.priority == bindparam("priority"))
    if filters.tags:
        # Served by the (user_id, tag, task_id) index: only this user's tag rows are read.
        with_all_tags = (
            select(_TAG.task_id)
            .where(_TAG.user_id == _OWNER_ID, _TAG.tag.in_(bindparam("tags", expanding=True)))
            .group_by(_TAG.task_id)
            .having(func.count() == bindparam("tag_count", type_=Integer))
        )
        conditions.append(_TASK.id.in_(with_all_tags))
    today = bindparam("today", type_=Date)
    if filters.overdue is True:
        conditions.extend([_TASK.completed == false(), _TASK.due_date < today])
    elif filters.overdue is False:
        # Spelled out: NOT (due_date < today) would drop tasks without a due date (NULL).
        conditions.append(
            or_(_TASK.completed == true(), _TASK.due_date.is_(None), _TASK.due_date >= today)
        )
    if filters.search:
        pattern = bindparam("pattern", type_=String)
        conditions.append(
            or_(
                _TASK.title.ilike(pattern, escape="\\"),
                _TASK.description.ilike(pattern, escape="\\"),
            )
        )
    if filters.due_before:
        conditions.append(_TASK.due_date <= bindparam("due_before"))
    if filters.due_after:
        conditions.append(_TASK.due_date >= bindparam("due_after"))
    if filters.created_after:
        conditions.append(_TASK.created_at >= bindparam("created_from"))
    if filters.created_before:
        conditions.append(_TASK.created_at < bindparam("created_until"))
    return conditions


def _ordering(sort_by: str, sort_order: str) -> list[Any]:
    column = _SORT_COLUMNS[sort_by]
    descending = sort_order == "desc"
    first = column.desc() if descending else column.asc()
    if sort_by == "due_date":
        first = first.nulls_last()
    if sort_by == "id":
        return [first]
    return [first, _TASK.id.desc() if descending else _TASK.id.asc()]


# The page's ids are chosen on an alias of `tasks`, the page read by them.
_WINDOW = _TASK_TABLE.alias("chosen")
_ON_WINDOW = ClauseAdapter(_WINDOW)


@lru_cache(maxsize=_SHAPES_KEPT)
def _page_statement(filters: _Filters, sort_by: str, sort_order: str) -> Executable:
    """A page of matching tasks with their tags, and the owner's change counter on each row.

    The window of ids comes first, in a subquery that reads only ids: PostgreSQL serves it from
    the owner's index alone. Asked for whole rows in id order, it would rather walk the primary
    key and skip other users' rows whenever one user holds much of the table (7 ms for a page
    of a user with 100,000 of 190,000 tasks, against 0.5 ms this way).
    """
    ordering = _ordering(sort_by, sort_order)
    window = (
        select(_WINDOW.c.id)
        .where(*(_ON_WINDOW.traverse(condition) for condition in _conditions(filters)))
        .order_by(*(_ON_WINDOW.traverse(key) for key in ordering))
        .offset(bindparam("skip", type_=Integer))
        .limit(bindparam("limit", type_=Integer))
    )
    return (
        select(*_VIEW_COLUMNS, _TAGS, change_service.counter_column(_OWNER_ID))
        .where(_TASK.user_id == _OWNER_ID, _TASK.id.in_(window))
        .order_by(*ordering)
    )


@lru_cache(maxsize=_SHAPES_KEPT)
def _count_statement(filters: _Filters) -> Executable:
    """How many tasks match, and the owner's change counter they were counted at."""
    return (
        select(func.count(), change_service.counter_column(_OWNER_ID))
        .select_from(_TASK_TABLE)
        .where(*_conditions(filters))
    )


# The totals of lists, cached per owner, filters and UTC date, each with the change counter
# it was counted at: served only while the counter is unchanged, so it is exact.
_TOTAL_FORMAT = 1
# Entries are checked against the counter; the TTL only bounds how long unused ones stay.
_TOTAL_TTL_SECONDS = 3600
# The parameters that choose the window and its order: they never change the total.
_WINDOW_PARAMS = {"skip", "limit", "sort_by", "sort_order"}


def total_key(owner_id: int, params: TaskListParams, today: date) -> str:
    """The cache key of the total of the owner's tasks matching `params` (paging aside)."""
    filters = params.model_dump_json(exclude=_WINDOW_PARAMS)
    return f"tasks:total:{_TOTAL_FORMAT}:{owner_id}:{etags.digest(filters)}:{today.isoformat()}"


def _cached_total(value: str | None, counter: int) -> int | None:
    """The total of a cache entry ("counter total"), if it was counted at `counter`."""
    counted_at, _, total = (value or "").partition(" ")
    return int(total) if counted_at == str(counter) and total.isdigit() else None


PageRead = TaskPage | UncountedPage


@overload
def read_page(
    session: Session,
    *,
    owner_id: int,
    params: TaskListParams,
    today: date,
    cached_total: str | None,
    count: Literal[True] = ...,
) -> TaskPage: ...


@overload
def read_page(
    session: Session,
    *,
    owner_id: int,
    params: TaskListParams,
    today: date,
    cached_total: str | None,
    count: bool,
) -> PageRead: ...


def read_page(
    session: Session,
    *,
    owner_id: int,
    params: TaskListParams,
    today: date,
    cached_total: str | None,
    count: bool = True,
) -> PageRead:
    """One page of the caller's matching tasks, and how many match in all, with the cache entry
    under `total_key` read before (None: none); `store_counted_total` stores a new one after.

    The page comes first, with the owner's change counter in the same statement; the total
    is the cached one when it was counted at that counter, else a count (an index-only scan,
    but one that reads every matching row: the whole cost of a list of a user with 100,000
    tasks), whose entry the page carries for the cache. With `count=False` that count is left
    to the caller: the page is then an `UncountedPage`.
    """
    filters = _filters_of(params)
    values = _filter_values(filters, owner_id, params, today)
    # The page and its tags in one round trip, with the counter they were read at.
    page = _page_statement(filters, params.sort_by, params.sort_order)
    rows = session.execute(page, {**values, "skip": params.skip, "limit": params.limit}).all()
    tasks = _views(row[:-1] for row in rows)
    counter = rows[0][-1] if rows else None
    if counter is not None and (cached := _cached_total(cached_total, counter)) is not None:
        return TaskPage(tasks=tasks, total=cached, change_counter=counter)
    uncounted = UncountedPage(tasks=tasks, change_counter=counter)
    return uncounted.counted(_count(session, filters, values)) if count else uncounted


def count_total(
    session: Session, *, owner_id: int, params: TaskListParams, today: date
) -> CountedTotal:
    """How many of the caller's tasks match the list's filters (what `read_page` counts)."""
    filters = _filters_of(params)
    return _count(session, filters, _filter_values(filters, owner_id, params, today))


def _count(session: Session, filters: _Filters, values: dict[str, Any]) -> CountedTotal:
    total, counted_at = session.execute(_count_statement(filters), values).one()
    return CountedTotal(total, counted_at)


def store_counted_total(totals: Cache, key: str, page: TaskPage) -> None:
    """Store the total `read_page` just counted under `key` (if it did) in `totals`, an
    in-process cache (`Resources.list_totals`)."""
    if page.counted is not None:
        totals.set(key, page.counted, _TOTAL_TTL_SECONDS)


# --- writes -------------------------------------------------------------------------------
# Each write makes the owner's cached answers (statistics, change counter) stale once it
# commits. The change counter itself needs nothing here: the database raises it with the task
# rows (services/changes.py).


def lock_for_tag_change(session: Session, task: Task) -> None:
    """Take the task's row lock and reload it, tags included, as last committed.

    Tag writes to one task are read-modify-write: unserialized, two requests that add the same
    tag both insert it (a unique violation), two removals both "succeed", and two replacements
    mix their sets. PostgreSQL orders them on the task row, as bulk updates and uploads do;
    SQLite writers hold the database's write lock from BEGIN already.
    """
    locked = session.scalar(
        select(Task.id).where(Task.id == task.id, Task.user_id == task.user_id).with_for_update()
    )
    if locked is None:
        raise TaskNotFoundError(task.id)
    session.refresh(task)


def replace_tags(task: Task, tags: Iterable[str]) -> None:
    """Make the task's tags exactly `tags` (already normalized), keeping unchanged rows."""
    # Sorted, as they are when loaded, so a write answers with the order a later read shows.
    wanted = sorted(set(tags))
    current = {row.tag: row for row in task.tag_rows}
    task.tag_rows = [current.get(tag) or TaskTag(tag=tag, user_id=task.user_id) for tag in wanted]


# A task's row, answered as inserted (its tags go in a statement of their own).
_INSERT_TASK = (
    insert(_TASK_TABLE)
    .values(
        user_id=_OWNER_ID,
        title=bindparam("title"),
        description=bindparam("description"),
        priority=bindparam("priority"),
        due_date=bindparam("due_date"),
        completed=bindparam("completed"),
    )
    .returning(*_VIEW_COLUMNS)
)


def _new_task_values(owner_id: int, data: TaskCreate) -> dict[str, Any]:
    """The parameters of `_INSERT_TASK` (and of the create in one statement)."""
    fields = data.model_dump(include={"title", "description", "priority", "due_date", "completed"})
    return {**fields, "owner_id": owner_id}


def create_task(session: Session, *, owner_id: int, data: TaskCreate, cache: Cache) -> TaskRead:
    """Create a task owned by the caller: its row (answered as inserted), then its tags.

    Core statements rather than an ORM flush: the unit of work cost a third of a create.
    """
    row = session.execute(_INSERT_TASK, _new_task_values(owner_id, data)).one()
    task = _view(row, sorted(set(data.tags)))
    if task.tags:
        session.execute(
            insert(_TAG_TABLE),
            [{"task_id": task.id, "tag": tag, "user_id": owner_id} for tag in task.tags],
        )
    change_service.invalidate_after_commit(session, owner_id=owner_id, cache=cache)
    return task


# A create in one statement on PostgreSQL: the task and its tags inserted together (the tags'
# INSERT a data-modifying CTE fed by the task's RETURNING), atomic without a transaction, so
# it needs no BEGIN and no COMMIT round trip (`Resources.write_alone`).
_NEW_TASK = _INSERT_TASK.cte("new_task")
_NEW_TASK_TAGS = (
    insert(_TAG_TABLE)
    .from_select(
        ["task_id", "tag", "user_id"],
        select(
            _NEW_TASK.c.id,
            func.unnest(bindparam("tags", type_=ARRAY(String))),
            _NEW_TASK.c.user_id,
        ),
    )
    .cte("new_task_tags")
)
_CREATE_IN_ONE_STATEMENT = select(*_NEW_TASK.c).add_cte(_NEW_TASK_TAGS)


class WriteAlone(Protocol):
    """Runs one statement that writes, atomic on its own, and answers its one row (None: none)."""

    async def __call__(
        self, statement: Executable, values: dict[str, Any], /
    ) -> Row[Any] | None: ...


async def create_task_alone(
    write: WriteAlone, *, owner_id: int, data: TaskCreate, cache: Cache
) -> TaskRead:
    """`create_task` in one statement, through `write` (`Resources.write_alone`: PostgreSQL
    on the async driver), then the owner's cached answers made stale, on the event loop."""
    tags = sorted(set(data.tags))
    row = await write(_CREATE_IN_ONE_STATEMENT, {**_new_task_values(owner_id, data), "tags": tags})
    if row is None:  # an INSERT ... RETURNING answers the row it inserted
        raise RuntimeError("the create in one statement answered no row")
    await change_service.invalidate_now(cache, owner_id=owner_id)
    return _view(row, tags)


def _differs(task: Task | TaskRead, changes: dict[str, Any], tags: list[str] | None) -> bool:
    """Whether applying these changes would change the task at all."""
    if tags is not None and sorted(set(tags)) != task.tags:
        return True
    return any(getattr(task, field) != value for field, value in changes.items())


_Updated = TypeVar("_Updated", TaskRead, list[Task])


@dataclass(frozen=True)
class UpdateResult(Generic[_Updated]):
    """What an update did, for one task or many alike.

    `newly_completed_ids`: the tasks that were open before the update and are completed now,
    each owed exactly one completion notice (re-sending `completed: true` completes nothing).
    """

    updated: _Updated
    newly_completed_ids: list[int]


def _newly_completed(changes: dict[str, Any], was_completed: dict[int, bool]) -> list[int]:
    """Of the tasks an update changes (their completion before it), those it completes."""
    if changes.get("completed") is not True:
        return []
    return [task_id for task_id, done in was_completed.items() if not done]


def _owe_notices(session: Session, result: UpdateResult[_Updated]) -> UpdateResult[_Updated]:
    # The one place an update decides on completion notices, in its own transaction.
    outbox.tasks_completed(session, task_ids=result.newly_completed_ids)
    return result


def check_if_match(task: etags.Versioned, *, if_match: str | None, required: bool) -> None:
    """A write's precondition on one task: 428 when one is required and missing, 412 with the
    current tag when `If-Match` names none of it."""
    if if_match is None:
        if required:
            raise PreconditionRequiredError()
        return
    current = etags.task_etag(task)
    if not etags.strong_match(if_match, current):
        raise PreconditionFailedError(task.id, current)


def update_task(
    session: Session,
    *,
    owner_id: int,
    task_id: int,
    data: TaskUpdate,
    if_match: str | None,
    require_if_match: bool,
    cache: Cache,
) -> UpdateResult[TaskRead]:
    """Change the fields the client sent, after the precondition held; an empty update is a 400.

    Core statements on the locked row, as `create_task`: the ORM's load, identity map and
    flush cost a third of an update and buy it nothing.
    """
    task = read_owned_task(session, owner_id=owner_id, task_id=task_id, for_update=True)
    check_if_match(task, if_match=if_match, required=require_if_match)
    changes = data.changes()
    if not changes:
        raise EmptyUpdateError()
    tags: list[str] | None = changes.pop("tags", None)
    if not _differs(task, changes, tags):
        # Nothing would change: the version, updated_at and the list tags stay as they are.
        return UpdateResult(task, newly_completed_ids=[])
    newly_completed = _newly_completed(changes, {task.id: task.completed})
    row = session.execute(
        update(_TASK_TABLE)
        .where(_TASK.id == task.id, _TASK.user_id == owner_id)
        .values(**changes, updated_at=utcnow(), version=_TASK.version + 1)
        .returning(*_VIEW_COLUMNS)
    ).one()
    new_tags = task.tags if tags is None else sorted(set(tags))
    if new_tags != task.tags:
        _retag(session, owner_id=owner_id, task_ids=[task.id], tags=new_tags)
    change_service.invalidate_after_commit(session, owner_id=owner_id, cache=cache)
    updated = _view(row, new_tags)
    return _owe_notices(session, UpdateResult(updated, newly_completed_ids=newly_completed))


# An update in one statement on PostgreSQL, for a request without `If-Match` (the tag is a
# digest the database cannot compute). Its parts, data-modifying CTEs of one statement:
#   seen     the task as the statement's snapshot has it (404 when absent), its sorted tags,
#            and whether the update would change anything (the no-op rule);
#   updated  the UPDATE, only of that same version, and only when it changes something;
#   dropped, added (tags sent) the tag rows the new set drops and adds;
#   notice   (completed sent) the completion notice's outbox row, when this update completes it.
# Every write to a task or its tags raises its version under the row lock, so a task whose
# version is still the one seen was not written in between: what `seen` read of it and of its
# tags is current when `updated` writes. When another write did land in between, `updated`
# writes nothing and the statement says so (`TaskUpdatedMeanwhile`); the caller then updates in
# a transaction instead.
_SEEN_TAGS = (
    select(
        func.coalesce(
            func.array_agg(postgresql.aggregate_order_by(_TAG.tag, _TAG.tag)),
            cast(postgresql.array([], type_=String), ARRAY(String)),
        )
    )
    .where(_TAG.task_id == _TASK.id)
    .correlate(_TASK_TABLE)
    .scalar_subquery()
)
_NEW_TAGS = bindparam("tags", type_=ARRAY(String))


class TaskUpdatedMeanwhile(Exception):
    """Another write changed the task between the snapshot and the update of one statement."""


@lru_cache(maxsize=64)
def _update_in_one_statement(fields: tuple[str, ...], with_tags: bool) -> Executable:
    """The statement that updates `fields` (and the tags, `with_tags`) of one task; built once
    per shape, run with the values as parameters (`_TASK_TABLE` names, `tags`, `now`)."""
    new = {name: bindparam(name, type_=_TASK[name].type) for name in fields}
    seen = (
        select(*_VIEW_COLUMNS, _SEEN_TAGS.label("tags"))
        .where(_TASK.id == bindparam("task_id", type_=Integer), _TASK.user_id == _OWNER_ID)
        .cte("seen")
    )
    changes = [seen.c[name].is_distinct_from(value) for name, value in new.items()]
    if with_tags:
        changes.append(seen.c.tags.is_distinct_from(_NEW_TAGS))
    differs = or_(*changes)
    updated = (
        update(_TASK_TABLE)
        .where(_TASK.id == seen.c.id, _TASK.version == seen.c.version, differs)
        .values(
            **new,
            updated_at=bindparam("now", type_=_TASK.updated_at.type),
            version=_TASK.version + 1,
        )
        .returning(*_VIEW_COLUMNS)
        .cte("updated")
    )
    statement = select(
        *(seen.c[name] for name in _VIEW_NAMES),
        seen.c.tags,
        differs.label("differs"),
        *(updated.c[name].label(f"new_{name}") for name in _VIEW_NAMES),
    ).select_from(seen.outerjoin(updated, true()))
    if with_tags:
        dropped = (
            delete(_TAG_TABLE)
            .where(_TAG.task_id == updated.c.id, _TAG.tag != all_(_NEW_TAGS))
            .cte("dropped")
        )
        added = (
            postgresql.insert(_TAG_TABLE)
            .from_select(
                ["task_id", "tag", "user_id"],
                select(updated.c.id, func.unnest(_NEW_TAGS), updated.c.user_id),
            )
            # The tags it already has: kept, not dropped, so no row is both deleted and added.
            .on_conflict_do_nothing()
            .cte("added")
        )
        statement = statement.add_cte(dropped, added)
    if "completed" in fields:
        notice = outbox.tasks_completed_cte(
            select(updated.c.id)
            .join_from(updated, seen, seen.c.id == updated.c.id)
            .where(updated.c.completed, ~seen.c.completed)
        )
        statement = statement.add_columns(notice.c.id.label("notice_id")).outerjoin(notice, true())
    return statement


@dataclass(frozen=True)
class UpdatedAlone:
    """What `update_task_alone` did: the task as answered, and the completion notice's job it
    recorded (None: none owed)."""

    task: TaskRead
    changed: bool
    notice_job_id: int | None


async def update_task_alone(
    write: WriteAlone, *, owner_id: int, task_id: int, changes: dict[str, Any]
) -> UpdatedAlone:
    """`update_task` without `If-Match`, in one statement through `write`
    (`Resources.write_alone`); 404 when the task is not the owner's. `changes` must not be
    empty. Raises `TaskUpdatedMeanwhile` when another write landed first (nothing written)."""
    fields = dict(changes)
    tags = fields.pop("tags", None)
    new_tags = None if tags is None else sorted(set(tags))
    statement = _update_in_one_statement(tuple(sorted(fields)), new_tags is not None)
    values = {**fields, "task_id": task_id, "owner_id": owner_id, "now": utcnow()}
    if new_tags is not None:
        values["tags"] = new_tags
    row = await write(statement, values)
    if row is None:
        raise TaskNotFoundError(task_id)
    columns = len(_VIEW_NAMES)
    seen, seen_tags, differs = row[:columns], row[columns], row[columns + 1]
    new = row[columns + 2 : 2 * columns + 2]
    if new[0] is None:
        if differs:
            raise TaskUpdatedMeanwhile(task_id)
        return UpdatedAlone(_view(seen, seen_tags), changed=False, notice_job_id=None)
    notice_job_id = row.notice_id if "completed" in fields else None
    task = _view(new[:columns], seen_tags if new_tags is None else new_tags)
    return UpdatedAlone(task, changed=True, notice_job_id=notice_job_id)


def _retag(session: Session, *, owner_id: int, task_ids: list[int], tags: list[str]) -> None:
    """Replace the tags of the owner's tasks with `tags` (normalized), in two statements."""
    session.execute(delete(_TAG_TABLE).where(_TAG.user_id == owner_id, _TAG.task_id.in_(task_ids)))
    if tags:
        rows = [{"task_id": i, "tag": t, "user_id": owner_id} for i in task_ids for t in tags]
        # One multi-row INSERT (at most 100 x 20 rows), not one statement per task.
        session.execute(insert(_TAG_TABLE).values(rows))


def delete_task(session: Session, *, task: Task, cache: Cache) -> None:
    """Delete a task; its tags and file rows go with it, their bytes after the commit."""
    file_service.remove_files_of_tasks_after_commit(session, Task.id == task.id)
    # One statement: the database cascade removes the tag and file rows. session.delete()
    # would first delete every loaded tag row itself.
    session.execute(delete(Task).where(Task.id == task.id, Task.user_id == task.user_id))
    session.expunge(task)
    change_service.invalidate_after_commit(session, owner_id=task.user_id, cache=cache)


def add_tags(session: Session, *, task: Task, tags: list[str], cache: Cache) -> Task:
    """Add normalized tags to a task; tags it already has are ignored."""
    lock_for_tag_change(session, task)
    merged = set(task.tags) | set(tags)
    if len(merged) > MAX_TAGS_PER_TASK:
        raise TooManyTagsError(len(merged), MAX_TAGS_PER_TASK)
    if merged != set(task.tags):
        replace_tags(task, merged)
        # Also what makes the flush update the task's row, and so raise its version.
        task.updated_at = utcnow()
        session.flush()
        change_service.invalidate_after_commit(session, owner_id=task.user_id, cache=cache)
    return task


def remove_tag(session: Session, *, task: Task, tag: str, cache: Cache) -> Task:
    """Remove one normalized tag from a task; 404 when the task lacks it."""
    lock_for_tag_change(session, task)
    if tag not in task.tags:
        raise TagNotFoundError(task.id, tag)
    replace_tags(task, (t for t in task.tags if t != tag))
    task.updated_at = utcnow()
    session.flush()
    change_service.invalidate_after_commit(session, owner_id=task.user_id, cache=cache)
    return task


def _bulk_conflicts(
    ids: list[int], tasks: dict[int, Task], if_match: dict[int, str]
) -> list[dict[str, Any]]:
    conflicts = []
    for task_id in ids:
        if task_id not in if_match:
            continue
        current = etags.task_etag(tasks[task_id])
        # Compared as the ETag header sends it: a weak or differently quoted tag never matches.
        if if_match[task_id].strip() != current:
            conflicts.append({"id": task_id, "etag": current})
    return conflicts


def bulk_update(
    session: Session, *, owner_id: int, data: BulkTaskUpdate, cache: Cache
) -> UpdateResult[list[Task]]:
    """Apply one update to many of the caller's tasks, all or nothing, in constant queries.

    Only the tasks the update really changes get a new version, updated_at and tag rows.
    """
    changes = data.updates.changes()
    if not changes:
        raise EmptyUpdateError()
    ids = data.task_ids
    owned_scope = (Task.user_id == owner_id, Task.id.in_(ids))
    # Locked (on PostgreSQL) so that no concurrent write changes or deletes them meanwhile;
    # their tags come in one more query.
    found = session.scalars(select(Task).where(*owned_scope).with_for_update(of=Task)).all()
    by_id = {task.id: task for task in found}
    missing = [task_id for task_id in ids if task_id not in by_id]
    if missing:
        raise TasksNotFoundError(missing)
    conflicts = _bulk_conflicts(ids, by_id, data.if_match or {})
    if conflicts:
        raise BulkPreconditionFailedError(conflicts)
    tags: list[str] | None = changes.pop("tags", None)
    changed = [task_id for task_id in ids if _differs(by_id[task_id], changes, tags)]
    if not changed:
        return UpdateResult([by_id[i] for i in ids], newly_completed_ids=[])
    newly_completed = _newly_completed(
        changes, {task_id: by_id[task_id].completed for task_id in changed}
    )
    changed_scope = (Task.user_id == owner_id, Task.id.in_(changed))
    session.execute(
        update(Task)
        .where(*changed_scope)
        .values(**changes, updated_at=utcnow(), version=Task.version + 1),
        execution_options={"synchronize_session": False},
    )
    if tags is not None:
        wanted = sorted(set(tags))
        retagged = [i for i in changed if by_id[i].tags != wanted]
        if retagged:
            _retag(session, owner_id=owner_id, task_ids=retagged, tags=wanted)
    # The changed tasks again, as the database now has them (fields, version and tags).
    session.scalars(
        select(Task).where(*changed_scope).execution_options(populate_existing=True)
    ).all()
    change_service.invalidate_after_commit(session, owner_id=owner_id, cache=cache)
    return _owe_notices(
        session, UpdateResult([by_id[i] for i in ids], newly_completed_ids=newly_completed)
    )
