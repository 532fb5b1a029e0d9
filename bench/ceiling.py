"""The ceiling app: what this stack serves when a handler does (almost) nothing.

The bench serves it with the same uvicorn settings and environment as the API, so each API
scenario can be read as a fraction of the fastest route of its kind on the same machine:

- `GET /ceiling/objects`: `async def`, 20 task-shaped objects from memory through
  `response_model=list[TaskRead]`, the API's own response schema.
- `GET /ceiling/select1`: a plain `def` route running `SELECT 1` through one ORM `Session` from
  a `sessionmaker` on an engine of its own: psycopg2, a pool as large as the bench's
  connections (`CEILING_POOL_SIZE`), no overflow and no pre-ping. Fixed, so that no change to
  the API's own engine can move the ceiling its scenarios are divided by.
- `POST /ceiling/bcrypt`: one bcrypt_sha256 verify at the configured cost, as a login spends.

Prototypes measure what the API's own service calls cost alone, on the same session setup
(reads without a transaction, writes committed, as the API does), for the first main bench
user: each is one of the API's routes without its middleware, authentication, dependencies,
rate limit and access line, taking the API's thread-pool hops on psycopg2 (one for a route
that does I/O; none for a cached read) and reading and writing the cache where the API does. Against the API's scenario, it shows how
much of a request is the work itself; against the ratio targets, whether the stack can reach
them at all.

- `GET /ceiling/list`: a page of 20 tasks, its total and the change counter (`list`).
- `GET /ceiling/task`: one task with its tags (`get`).
- `POST /ceiling/tasks`: a task created from a validated body, for the first writer, in a
  transaction (`create` with an `Idempotency-Key`, or on SQLite; `floor_create` below is the
  create of PostgreSQL without a key).
- `PATCH /ceiling/task`: a random task's description changed, locked, committed (`patch`).
- `GET /ceiling/stats`: the statistics from the cache (`stats_warm`).
- `GET /ceiling/revalidate`: the list's 304 from the cached change counter (`list_304`).
- `PATCH /ceiling/task` + `GET /ceiling/stats` pipelined: the statistics recomputed after
  each write, as in the API's cold scenario (`stats_cold`).

Alternatives measure what another driver would give, where even a prototype misses its target:
the same pool on asyncpg through SQLAlchemy's asyncio extension, statements awaited on the
event loop (no thread-pool hop), reads in autocommit.

- `GET /ceiling/async/select1`: the `SELECT 1` ceiling on the async driver (`alt_select1`).
- `POST /ceiling/async/tasks/one-statement`: the API's create as it runs on PostgreSQL
  (`task_service.create_task_alone`): the task and its tags in one statement in autocommit on
  the async driver, then the cache version's increment on the event loop (`floor_create`).
- `PATCH /ceiling/async/task/one-statement`: the least a patch could send, on the async
  driver: the description updated and the tags read back in one statement in autocommit, no
  `BEGIN`, no `COMMIT`, no lock, no precondition, no cache version bump (`floor_patch`). What
  no design of the patch on this stack can beat.
- `GET /ceiling/async/list`, `GET /ceiling/async/task`, `POST /ceiling/async/tasks`,
  `PATCH /ceiling/async/task`: the list, get, create and patch prototypes' very code on the
  async driver (`alt_list`, `alt_get`, `alt_create`, `alt_patch`).
"""

import itertools
import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, TypeAdapter
from sqlalchemy import (
    Connection,
    Executable,
    Row,
    String,
    bindparam,
    column,
    create_engine,
    make_url,
    select,
    text,
)
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session, sessionmaker

import auth
import db_config
import etags
from config import get_settings
from db_models import Task, User
from enums import Priority
from logging_config import configure_logging
from models import TaskCreate, TaskListParams, TaskRead, TaskStats, TaskUpdate
from redis_config import MemoryCache, build_cache
from resources import LIST_TOTALS_KEPT
from responses import json_response
from services import changes as change_service
from services import stats as stats_service
from services import tasks as task_service

OBJECT_COUNT = 20
T = TypeVar("T")
_TASK = TypeAdapter(TaskRead)
_TASKS = TypeAdapter(list[TaskRead])
# The user whose tasks the prototypes read (bench/seed.py seeds it first).
PROTOTYPE_USER = "bench01"
# The user the create prototype adds tasks to (a writer, as in the API's create scenario).
PROTOTYPE_WRITER = "writer01"
# The alternative driver of the async prototypes: no thread-pool hop for a statement.
ASYNC_DRIVER = "postgresql+asyncpg"
# The bench sets it to its number of connections (16 unless changed).
POOL_SIZE_VARIABLE = "CEILING_POOL_SIZE"
_PASSWORD = "ceiling-bench-password"  # noqa: S105 (a fixed bench credential)


@dataclass(frozen=True)
class _TaskShape:
    """Attributes like an ORM task, so validation takes the same from-attributes path."""

    id: int
    title: str
    description: str | None
    completed: bool
    priority: Priority
    due_date: date | None
    created_at: datetime
    updated_at: datetime
    user_id: int
    tags: list[str] = field(default_factory=list)
    version: int = 1


def _objects() -> list[_TaskShape]:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    priorities = list(Priority)
    return [
        _TaskShape(
            id=i,
            title=f"Ceiling task {i}",
            description=None if i % 2 else f"Description of task {i}",
            completed=i % 3 == 0,
            priority=priorities[i % len(priorities)],
            due_date=None if i % 4 == 0 else date(2026, 6, 1) + timedelta(days=i),
            created_at=now,
            updated_at=now + timedelta(minutes=i),
            user_id=1,
            tags=["work", "home"][: i % 3],
        )
        for i in range(1, OBJECT_COUNT + 1)
    ]


class Select1(BaseModel):
    value: int


class Verified(BaseModel):
    verified: bool


def create_app() -> FastAPI:
    """Build the ceiling app from the same settings the API reads."""
    settings = get_settings()
    configure_logging(settings)
    objects = _objects()
    # Hashed once at startup at the configured cost; each request only verifies, as login does.
    password_hash = auth.hash_password(_PASSWORD, settings)
    engine = create_engine(
        settings.database_url,
        pool_size=int(os.environ.get(POOL_SIZE_VARIABLE, "16")),
        max_overflow=0,
        pool_pre_ping=False,
    )
    sessions = sessionmaker(engine)
    # The alternative: the same pool on an async driver; reads in autocommit, as the API's.
    async_engine = create_async_engine(
        make_url(settings.database_url).set(drivername=ASYNC_DRIVER),
        pool_size=int(os.environ.get(POOL_SIZE_VARIABLE, "16")),
        max_overflow=0,
    )
    async_reader = async_engine.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await async_engine.dispose()

    app = FastAPI(title="Task Manager API ceiling", openapi_url=None, lifespan=lifespan)

    @app.get("/ceiling/objects", response_model=list[TaskRead])
    async def ceiling_objects() -> list[_TaskShape]:
        """20 task-shaped objects from memory through the API's response model."""
        return objects

    @app.get("/ceiling/select1", response_model=Select1)
    def ceiling_select1() -> Select1:
        """SELECT 1 through one ORM session (one thread-pool hop: the route's)."""
        session: Session
        with sessions() as session:
            value = session.execute(text("SELECT 1")).scalar_one()
        return Select1(value=value)

    cache = build_cache(settings)
    totals = MemoryCache(max_entries=LIST_TOTALS_KEPT)  # as the API's Resources.list_totals
    chosen: dict[str, int] = {}
    task_ids: list[int] = []
    edits = itertools.count(1)

    def prototype_ids(session: Session) -> tuple[int, int]:
        """The prototypes' user and its first task, looked up once."""
        if not chosen:
            user_id = session.scalar(select(User.id).where(User.username == PROTOTYPE_USER))
            writer_id = session.scalar(select(User.id).where(User.username == PROTOTYPE_WRITER))
            ids = session.scalars(select(Task.id).where(Task.user_id == user_id).order_by(Task.id))
            task_ids.extend(ids)
            chosen.update(user=user_id or 0, writer=writer_id or 0)
        return chosen["user"], task_ids[0] if task_ids else 0

    # Each prototype's work, on a session: run by a sync route in its thread-pool hop, and by
    # an async route on the async driver (`AsyncConnection.run_sync`: the same code, its
    # statements awaited on the event loop).
    async def list_page(read: stats_service.Reader) -> Response:
        # As the API's list: the total's cache entry read before and stored after on the event
        # loop, the page's statements through `read` (one thread-pool hop, or the async driver).
        user_id = await prototype_user()
        params = TaskListParams(limit=20)
        today = stats_service.utc_today()
        key = task_service.total_key(user_id, params, today)
        cached_total = totals.get(key)
        page = await read(
            partial(
                task_service.read_page,
                owner_id=user_id,
                params=params,
                today=today,
                cached_total=cached_total,
            )
        )
        task_service.store_counted_total(totals, key, page)
        return json_response(_TASKS, page.tasks, {})

    def one_task(session: Session) -> Response:
        user_id, task_id = prototype_ids(session)
        task = task_service.read_owned_task(session, owner_id=user_id, task_id=task_id)
        return json_response(_TASK, task, {})

    def create(data: TaskCreate) -> Callable[[Session], Response]:
        def work(session: Session) -> Response:
            prototype_ids(session)
            writer = chosen["writer"]
            task = task_service.create_task(session, owner_id=writer, data=data, cache=cache)
            session.commit()
            return json_response(_TASK, task, {}, status_code=201)

        return work

    def patch(data: TaskUpdate) -> Callable[[Session], Response]:
        def work(session: Session) -> Response:
            user_id, _ = prototype_ids(session)
            edit = data.model_copy(update={"description": f"{data.description} {next(edits)}"})
            result = task_service.update_task(
                session,
                owner_id=user_id,
                # A random task of the user's, as the API's patch scenario: spreads the locks.
                task_id=random.choice(task_ids),
                data=edit,
                if_match=None,
                require_if_match=False,
                cache=cache,
            )
            session.commit()
            return json_response(_TASK, result.updated, {})

        return work

    def on_sync_driver(work: Callable[[Session], Response], *, read: bool) -> Response:
        with sessions() as session:
            if read:
                db_config.for_reading(session)  # read as the API reads
            return work(session)

    async def read_in_thread(work: Callable[[Session], T]) -> T:
        # The thread-pool path of `Resources.read`, on the ceiling's own sessions.
        def run() -> T:
            with db_config.reading(sessions) as session:
                return work(session)

        return await anyio.to_thread.run_sync(run)

    async def on_async_driver(work: Callable[[Session], T], *, read: bool) -> T:
        def in_session(connection: Connection) -> T:
            with Session(bind=connection) as session:
                return work(session)

        async with (async_reader if read else async_engine).connect() as connection:
            return await connection.run_sync(in_session)

    @app.get("/ceiling/list", response_model=list[TaskRead])
    async def prototype_list() -> Response:
        """The API's list statements for one user, 20 tasks, nothing around them."""
        return await list_page(read_in_thread)

    @app.get("/ceiling/task", response_model=TaskRead)
    def prototype_task() -> Response:
        """The API's statement for one task with its tags, nothing around it."""
        return on_sync_driver(one_task, read=True)

    @app.post("/ceiling/tasks", response_model=TaskRead, status_code=201)
    def prototype_create(data: TaskCreate) -> Response:
        """The API's create in a transaction for the first writer, committed, nothing around it."""
        return on_sync_driver(create(data), read=False)

    @app.patch("/ceiling/task", response_model=TaskRead)
    def prototype_patch(data: TaskUpdate) -> Response:
        """The API's update of a random task's description (always a change), committed."""
        return on_sync_driver(patch(data), read=False)

    @app.get("/ceiling/async/list", response_model=list[TaskRead])
    async def alternative_list() -> Response:
        """`prototype_list` on the async driver."""
        return await list_page(partial(on_async_driver, read=True))

    @app.get("/ceiling/async/task", response_model=TaskRead)
    async def alternative_task() -> Response:
        """`prototype_task` on the async driver."""
        return await on_async_driver(one_task, read=True)

    @app.post("/ceiling/async/tasks", response_model=TaskRead, status_code=201)
    async def alternative_create(data: TaskCreate) -> Response:
        """`prototype_create` on the async driver."""
        return await on_async_driver(create(data), read=False)

    @app.patch("/ceiling/async/task", response_model=TaskRead)
    async def alternative_patch(data: TaskUpdate) -> Response:
        """`prototype_patch` on the async driver."""
        return await on_async_driver(patch(data), read=False)

    def look_up_ids() -> None:
        with sessions() as session:
            prototype_ids(session)

    async def prototype_user() -> int:
        if not chosen:
            await anyio.to_thread.run_sync(look_up_ids)
        return chosen["user"]

    @app.get("/ceiling/stats", response_model=TaskStats)
    async def prototype_stats() -> TaskStats:
        """The API's statistics: from the cache, or recomputed after a prototype's write."""
        user_id = await prototype_user()
        ttl = settings.stats_cache_ttl_seconds
        result = await stats_service.read_stats(
            read_in_thread, owner_id=user_id, cache=cache, ttl_seconds=ttl
        )
        return result.stats

    @app.get("/ceiling/revalidate")
    async def prototype_revalidate(request: Request) -> Response:
        """The list's revalidation: the cached change counter (or one read of it), answered 304."""
        user_id = await prototype_user()
        known = await change_service.read_cached_counter(cache, owner_id=user_id)
        counter = known.counter
        if counter is None:
            counter = await read_in_thread(
                partial(change_service.current_counter, owner_id=user_id)
            )
            await known.store(cache, counter)
        etag = etags.collection_etag(
            kind="tasks",
            user_id=user_id,
            counter=counter,
            query_string=request.scope.get("query_string", b""),
            today=stats_service.utc_today(),
        )
        return Response(status_code=304, headers={"ETag": etag})

    # The floors: one PostgreSQL statement per write, in autocommit, on the async driver.
    view = [Task.__table__.c[name] for name in TaskRead.model_fields if name != "tags"]
    # Our own table's column names: the only text put into these statements.
    returned = ", ".join(column.name for column in view)
    one_statement_patch = (
        text(
            "UPDATE tasks SET description = :description, updated_at = :now,"  # noqa: S608
            " version = version + 1 WHERE id = :task_id AND user_id = :owner"
            f" RETURNING {returned}, (SELECT string_agg(tag, '/') FROM task_tags"
            " WHERE task_tags.task_id = tasks.id) AS tags"
        )
        .bindparams(bindparam("now", type_=Task.__table__.c.updated_at.type))
        .columns(*view, column("tags", String))
    )

    async def one_statement(statement: Executable, values: dict[str, object]) -> Row[Any]:
        async with async_reader.connect() as connection:
            return (await connection.execute(statement, values)).one()

    @app.post("/ceiling/async/tasks/one-statement", response_model=TaskRead, status_code=201)
    async def floor_create(data: TaskCreate) -> Response:
        """The API's create in one statement in autocommit on the async driver, alone."""
        await prototype_user()
        task = await task_service.create_task_alone(
            one_statement, owner_id=chosen["writer"], data=data, cache=cache
        )
        return json_response(_TASK, task, {}, status_code=201)

    @app.patch("/ceiling/async/task/one-statement", response_model=TaskRead)
    async def floor_patch(data: TaskUpdate) -> Response:
        """A patch of a random task's description in one statement in autocommit."""
        user_id = await prototype_user()
        values = {
            "description": f"{data.description} {next(edits)}",
            "now": datetime.now(UTC),
            "task_id": random.choice(task_ids),
            "owner": user_id,
        }
        row = (await one_statement(one_statement_patch, values))._asdict()
        tags = sorted(row.pop("tags").split("/")) if row["tags"] else []
        return json_response(_TASK, TaskRead.model_validate({**row, "tags": tags}), {})

    @app.get("/ceiling/async/select1", response_model=Select1)
    async def alternative_select1() -> Select1:
        """SELECT 1 on the async driver: no thread-pool hop at all."""
        async with async_engine.connect() as connection:
            value = (await connection.execute(text("SELECT 1"))).scalar_one()
        return Select1(value=value)

    @app.post("/ceiling/bcrypt", response_model=Verified)
    def ceiling_bcrypt() -> Verified:
        """One password verify at the configured bcrypt cost."""
        return Verified(verified=auth.verify_password(_PASSWORD, password_hash, settings))

    return app


app = create_app()
