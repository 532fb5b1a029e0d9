"""The transactional outbox: work a change causes, recorded in the change's own transaction.

A change that owes work after it (a completion notice, removing a deleted file's bytes) adds an
`outbox` row in its own transaction: the row exists exactly when the change committed. Once the
transaction commits, the row's id is handed to the job runner of the app whose session committed
it (`jobs.py`: an RQ queue with REDIS_URL set, else a runner thread of the app); a periodic sweep
dispatches again
whatever is due and not done, so a process killed right after a commit, a lost enqueue or a
flushed Redis delays a job but never loses it. Jobs therefore run at least once.

Each run first claims its row (a lease of JOB_TIMEOUT_SECONDS, committed on its own), then does
the work, then marks the row done. A second run of the same job (a duplicate in the queue, the
sweep racing the first dispatch) finds the row done or claimed and does nothing: a notice is sent
once per completion. The one window left is a crash, or a database outage, after the mail server
accepted a notice and before its row was marked done: that notice is sent again once the lease
has expired. We chose this (at least once, with the done mark as the dedupe record) over marking
the row done before sending, which would lose the notice in the same window instead.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import (
    CTE,
    Select,
    String,
    delete,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from db_config import after_commit
from db_models import OutboxJob
from resources import of_session

TASK_COMPLETED = "task_completed"
REMOVE_STORED_FILES = "remove_stored_files"

# A failed run is retried after 30 s, then twice as long each time, at most an hour apart.
_FIRST_RETRY_SECONDS = 30
_LONGEST_RETRY_SECONDS = 3600
_ERROR_CHARS = 500
# Done rows are kept this long (to look into), then the sweep removes them.
DONE_RETENTION = timedelta(days=7)
_NO_FIELDS: dict[str, Any] = {"synchronize_session": False}


def _dispatch_committed(session: Session, job_ids: list[int]) -> None:
    # To the runner of the app (or worker) whose session committed them; a session made
    # elsewhere (a command-line tool) leaves them to the sweep of a running service.
    resources = of_session(session)
    if resources is not None:
        resources.submit_jobs(job_ids)


def record(session: Session, kind: str, payloads: Sequence[dict[str, Any]]) -> list[int]:
    """Add jobs to the session's transaction; they are dispatched once it commits."""
    if not payloads:
        return []
    job_ids = list(
        session.scalars(
            insert(OutboxJob).returning(OutboxJob.id),
            [{"kind": kind, "payload": payload} for payload in payloads],
        )
    )
    after_commit(session, partial(_dispatch_committed, session, job_ids))
    return job_ids


def tasks_completed(session: Session, *, task_ids: Sequence[int]) -> None:
    """Owe one completion notice per task that just became completed."""
    record(session, TASK_COMPLETED, [{"task_id": task_id} for task_id in task_ids])


def tasks_completed_cte(task_ids: Select[tuple[int]]) -> CTE:
    """`tasks_completed` as a data-modifying CTE of a statement that writes alone (no session):
    one notice per id the `task_ids` select answers; its column `id` is each job's. The caller
    hands the ids to `Resources.submit_jobs` once the statement has run."""
    completed = task_ids.subquery("completed")
    payload = func.json_build_object(literal_column("'task_id'"), completed.c[0])
    rows = select(literal(TASK_COMPLETED, String), payload)
    return (
        insert(OutboxJob)
        .from_select(["kind", "payload"], rows)
        .returning(OutboxJob.id)
        .cte("notice")
    )


def stored_files_deleted(session: Session, *, stored_filenames: Sequence[str]) -> None:
    """Owe the removal of the bytes of file rows this transaction deletes."""
    if stored_filenames:
        record(session, REMOVE_STORED_FILES, [{"stored_filenames": list(stored_filenames)}])


# --- running jobs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A job this run holds the lease of."""

    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int


def retry_delay(attempts: int) -> timedelta:
    """How long to wait after the `attempts`-th failed run."""
    exponent = min(max(attempts - 1, 0), 20)
    return timedelta(seconds=min(_FIRST_RETRY_SECONDS * 2**exponent, _LONGEST_RETRY_SECONDS))


def _unclaimed(now: datetime) -> Any:
    return or_(OutboxJob.claimed_until.is_(None), OutboxJob.claimed_until < now)


def claim(
    session: Session, job_id: int, *, now: datetime, lease: timedelta, max_attempts: int
) -> Claim | None:
    """Take the job's lease and count the attempt; None when done, leased or out of attempts."""
    row = session.execute(
        update(OutboxJob)
        .where(
            OutboxJob.id == job_id,
            OutboxJob.done_at.is_(None),
            OutboxJob.attempts < max_attempts,
            _unclaimed(now),
        )
        .values(claimed_until=now + lease, attempts=OutboxJob.attempts + 1)
        .returning(OutboxJob.kind, OutboxJob.payload, OutboxJob.attempts),
        execution_options=_NO_FIELDS,
    ).one_or_none()
    if row is None:
        return None
    return Claim(id=job_id, kind=row.kind, payload=row.payload, attempts=row.attempts)


def finish(session: Session, job_id: int, *, now: datetime) -> None:
    """Mark a job done: every later run of it does nothing."""
    session.execute(
        update(OutboxJob)
        .where(OutboxJob.id == job_id)
        .values(done_at=now, claimed_until=None, last_error=None),
        execution_options=_NO_FIELDS,
    )


def fail(session: Session, job: Claim, *, now: datetime, error: str, max_attempts: int) -> bool:
    """Record a failed run: retried after a delay, or given up (True) after the last attempt."""
    give_up = job.attempts >= max_attempts
    schedule: dict[str, Any] = (
        {"done_at": now} if give_up else {"available_at": now + retry_delay(job.attempts)}
    )
    session.execute(
        update(OutboxJob)
        .where(OutboxJob.id == job.id)
        .values(claimed_until=None, last_error=error[:_ERROR_CHARS], **schedule),
        execution_options=_NO_FIELDS,
    )
    return give_up


# --- the sweep ----------------------------------------------------------------------------


def due(session: Session, *, now: datetime, max_attempts: int, limit: int) -> list[int]:
    """Jobs not done, due, not leased and with attempts left: oldest first."""
    return list(
        session.scalars(
            select(OutboxJob.id)
            .where(
                OutboxJob.done_at.is_(None),
                OutboxJob.available_at <= now,
                OutboxJob.attempts < max_attempts,
                _unclaimed(now),
            )
            .order_by(OutboxJob.id)
            .limit(limit)
        )
    )


def give_up_exhausted(
    session: Session, *, now: datetime, max_attempts: int
) -> list[tuple[int, str]]:
    """Close jobs whose every attempt was taken by runs that never finished (killed)."""
    rows = session.execute(
        update(OutboxJob)
        .where(
            OutboxJob.done_at.is_(None),
            OutboxJob.attempts >= max_attempts,
            _unclaimed(now),
        )
        .values(
            done_at=now,
            claimed_until=None,
            last_error=func.coalesce(OutboxJob.last_error, "the runs did not finish"),
        )
        .returning(OutboxJob.id, OutboxJob.kind),
        execution_options=_NO_FIELDS,
    ).all()
    return [(row.id, row.kind) for row in rows]


def purge_done(session: Session, *, before: datetime) -> int:
    """Remove rows done before `before`; returns how many."""
    result = session.execute(
        delete(OutboxJob).where(OutboxJob.done_at < before), execution_options=_NO_FIELDS
    )
    return int(getattr(result, "rowcount", 0) or 0)


def pending_counts(session: Session) -> dict[str, int]:
    """Jobs recorded and not done yet, by kind: the durable queue depth."""
    rows = session.execute(
        select(OutboxJob.kind, func.count())
        .where(OutboxJob.done_at.is_(None))
        .group_by(OutboxJob.kind)
    ).all()
    return {str(kind): int(number) for kind, number in rows}
