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

from sqlalchemy import Connection, Engine, insert, text

import auth
from config import Settings
from db_models import AuthSession, Task, TaskTag, User
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


class _Inserter:
    """Buffers rows and INSERTs them in batches (executemany: multi-row VALUES)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
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
            self.connection.execute(insert(Task), self.tasks)
            self.task_count += len(self.tasks)
            self.tasks = []
        if self.tags:
            self.connection.execute(insert(TaskTag), self.tags)
            self.tag_count += len(self.tags)
            self.tags = []


def seed(
    engine: Engine,
    settings: Settings,
    *,
    main_users: int,
    tasks_per_user: int,
    scale: Sequence[int],
) -> Seeded:
    """Insert every user, task and tag the scenarios use into an empty schema."""
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
        connection.execute(
            insert(User),
            [_user_row(user.id, user.username, password_hash, now) for user in everyone],
        )
        connection.execute(
            insert(AuthSession),
            [
                {
                    "id": session_id(user.id),
                    "user_id": user.id,
                    "created_at": now,
                    "last_used_at": now,
                    "expires_at": now + timedelta(days=365),
                    "user_agent": "bench",
                }
                for user in everyone
            ],
        )
        inserter = _Inserter(connection)
        for user in everyone:
            for task, tags in _task_rows(rng, user.id, user.task_ids, today, now):
                inserter.add(task, tags)
        inserter.flush()
        # Ids were given explicitly: move the sequences past them for the API's inserts.
        for table in ("users", "tasks", "auth_sessions"):
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
