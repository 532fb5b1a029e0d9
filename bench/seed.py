"""Seed the bench database in bulk (Core INSERTs), not through thousands of HTTP calls.

Users: `bench01..` (the main scenarios read and patch their tasks), `writer01..` (create and
upload go to them, so the main users' data stays the same between repeats) and one
`scaleN` user with N tasks per size of the scale curve. All share one password, hashed once
at the production bcrypt cost. Ids are assigned here, so no RETURNING round trips are needed.
Each user gets one login session whose id is the user's id (`session_id`): the bench signs
its access tokens for that session, as the API does at login.
"""

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, Table, TypeDecorator, insert, text

import auth
from config import Settings
from db_models import AuthSession, Base, Task, TaskTag, User
from enums import Priority

PASSWORD = "bench-password-0123456789"  # noqa: S105 (the seeded bench users')
BATCH = 5_000
TAGS = ("work", "home", "urgent", "errand", "health", "finance", "study", "travel")
TAG_WEIGHTS = (35, 20, 12, 10, 8, 7, 5, 3)
TAG_COUNT_WEIGHTS = (30, 35, 25, 10)  # tasks with 0, 1, 2, 3 tags
VERBS = (
    "Write",
    "Review",
    "Plan",
    "Call about",
    "Fix",
    "Update",
    "Prepare",
    "Send",
    "Book",
    "Sort",
)
# "quarterly report" makes one title in ten match the bench's search term "report".
SUBJECTS = (
    "budget",
    "slides",
    "invoice",
    "meeting notes",
    "roadmap",
    "garden",
    "dentist visit",
    "newsletter",
    "backlog",
    "quarterly report",
)
# Descriptions never contain the search term: the patch scenarios rewrite them.
NOTES = ("Before Friday", "Ask Sam first", "Needs the new numbers", "Low effort", "Blocked on IT")
PRIORITIES = (Priority.LOW, Priority.MEDIUM, Priority.HIGH)
PRIORITY_WEIGHTS = (30, 45, 25)
SEARCH_TERM = "report"
TAG_FILTER = "work"


@dataclass
class SeededUser:
    id: int
    username: str
    created_at: datetime
    task_ids: list[int] = field(default_factory=list)


@dataclass
class Seeded:
    main: list[SeededUser]
    writers: list[SeededUser]
    scale: dict[int, SeededUser]
    task_count: int
    tag_count: int


class _Ids:
    def __init__(self) -> None:
        self.user = 0
        self.task = 0


def session_id(user_id: int) -> int:
    """The seeded login session of a seeded user."""
    return user_id


def _user_row(user_id: int, username: str, password_hash: str, now: datetime) -> dict[str, Any]:
    return {
        "id": user_id,
        "username": username,
        "email": f"{username}@bench.example.com",
        "hashed_password": password_hash,
        "created_at": now,
    }


def _task_rows(
    rng: random.Random, user_id: int, task_ids: Sequence[int], today: date, now: datetime
) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    for number, task_id in enumerate(task_ids, start=1):
        created = now - timedelta(minutes=rng.randrange(365 * 24 * 60))
        due = None if rng.random() < 0.2 else today + timedelta(days=rng.randint(-60, 120))
        task = {
            "id": task_id,
            "user_id": user_id,
            "title": f"{rng.choice(VERBS)} the {rng.choice(SUBJECTS)} #{number}",
            "description": None if rng.random() < 0.5 else rng.choice(NOTES),
            "completed": rng.random() < 0.4,
            "priority": rng.choices(PRIORITIES, PRIORITY_WEIGHTS)[0],
            "due_date": due,
            "created_at": created,
            "updated_at": created + timedelta(minutes=rng.randrange(60 * 24 * 30)),
        }
        wanted = rng.choices(range(len(TAG_COUNT_WEIGHTS)), TAG_COUNT_WEIGHTS)[0]
        tags: set[str] = set()
        while len(tags) < wanted:
            tags.add(rng.choices(TAGS, TAG_WEIGHTS)[0])
        yield task, [{"task_id": task_id, "tag": tag, "user_id": user_id} for tag in sorted(tags)]


@dataclass(frozen=True)
class Tables:
    """Where the rows go: today's tables, or those an earlier revision's migrations built."""

    users: Table
    tasks: Table
    tags: Table
    sessions: Table | None  # login sessions; None where the schema has none

    @classmethod
    def of_models(cls) -> "Tables":
        tables = Base.metadata.tables
        return cls(
            tables[User.__tablename__],
            tables[Task.__tablename__],
            tables[TaskTag.__tablename__],
            tables[AuthSession.__tablename__],
        )

    @classmethod
    def reflected(cls, engine: Engine) -> "Tables":
        """The tables as they are in this database (an earlier revision's schema)."""
        metadata = MetaData()
        metadata.reflect(engine)
        tables = metadata.tables
        return cls(
            tables[User.__tablename__],
            tables[Task.__tablename__],
            tables[TaskTag.__tablename__],
            tables.get(AuthSession.__tablename__),
        )


def _fit(
    connection: Connection, table: Table, rows: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The rows with only the columns `table` has, each value stored as today's models store it.

    For today's tables this changes nothing; a reflected (older) table lacks some columns and
    has plain column types, so the models' own types (a priority's rank, say) convert the values
    as they would for today's table.
    """
    model = Base.metadata.tables[table.name]
    if table is model:
        return list(rows)
    keep = [name for name in rows[0] if name in table.c] if rows else []
    binders: dict[str, TypeDecorator[Any]] = {
        name: kind for name in keep if isinstance(kind := model.c[name].type, TypeDecorator)
    }
    return [
        {
            name: (
                binders[name].process_bind_param(row[name], connection.dialect)
                if name in binders
                else row[name]
            )
            for name in keep
        }
        for row in rows
    ]


class _Inserter:
    """Buffers rows and INSERTs them in batches (executemany: multi-row VALUES)."""

    def __init__(self, connection: Connection, tables: Tables) -> None:
        self.connection = connection
        self.tables = tables
        self.tasks: list[dict[str, Any]] = []
        self.tags: list[dict[str, Any]] = []
        self.task_count = 0
        self.tag_count = 0

    def add(self, task: dict[str, Any], tags: list[dict[str, Any]]) -> None:
        self.tasks.append(task)
        self.tags.extend(tags)
        if len(self.tasks) >= BATCH:
            self.flush()

    def flush(self) -> None:
        # Tasks first: the tag rows reference them.
        if self.tasks:
            self.connection.execute(
                insert(self.tables.tasks), _fit(self.connection, self.tables.tasks, self.tasks)
            )
            self.task_count += len(self.tasks)
            self.tasks = []
        if self.tags:
            self.connection.execute(
                insert(self.tables.tags), _fit(self.connection, self.tables.tags, self.tags)
            )
            self.tag_count += len(self.tags)
            self.tags = []


def seed(
    engine: Engine,
    settings: Settings,
    *,
    main_users: int,
    tasks_per_user: int,
    scale: Sequence[int],
    tables: Tables | None = None,
) -> Seeded:
    """Insert every user, task and tag the scenarios use into an empty schema.

    The same rows, ids included, on every call: a baseline database gets exactly the data
    today's API gets (`tables` reflected from its schema).
    """
    tables = tables or Tables.of_models()
    rng = random.Random(20261124)  # the same data on every run
    now = datetime.now(UTC)
    today = now.date()
    password_hash = auth.hash_password(PASSWORD, settings)
    ids = _Ids()

    def new_user(username: str, task_count: int) -> SeededUser:
        ids.user += 1
        task_ids = list(range(ids.task + 1, ids.task + task_count + 1))
        user = SeededUser(ids.user, username, now, task_ids)
        ids.task += task_count
        return user

    main = [new_user(f"bench{i:02d}", tasks_per_user) for i in range(1, main_users + 1)]
    writers = [new_user(f"writer{i:02d}", tasks_per_user) for i in range(1, main_users + 1)]
    scaled = {size: new_user(f"scale{size}", size) for size in scale}
    everyone = [*main, *writers, *scaled.values()]

    with engine.begin() as connection:
        users = [_user_row(user.id, user.username, password_hash, now) for user in everyone]
        connection.execute(insert(tables.users), _fit(connection, tables.users, users))
        sequences = ["users", "tasks"]
        if tables.sessions is not None:
            sequences.append(tables.sessions.name)
            sessions = [
                {
                    "id": session_id(user.id),
                    "user_id": user.id,
                    "created_at": now,
                    "last_used_at": now,
                    "expires_at": now + timedelta(days=365),
                    "user_agent": "bench",
                }
                for user in everyone
            ]
            connection.execute(insert(tables.sessions), _fit(connection, tables.sessions, sessions))
        inserter = _Inserter(connection, tables)
        for user in everyone:
            for task, tags in _task_rows(rng, user.id, user.task_ids, today, now):
                inserter.add(task, tags)
        inserter.flush()
        # Ids were given explicitly: move the sequences past them for the API's inserts.
        for table in sequences:
            connection.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                    f"(SELECT max(id) FROM {table}))"
                )
            )
    # Fresh planner statistics, as autovacuum would give a long-running database.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))
    return Seeded(main, writers, scaled, inserter.task_count, inserter.tag_count)
