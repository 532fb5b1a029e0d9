"""Jobs: what each outbox job does, and the runners that carry them out after the commit.

`run_job(resources, job_id)` is the one entry point: it claims the job's outbox row, does the
work with the resources it is given (`resources.py`: sessions, storage, counters) and marks the
row done (see `outbox.py` for the delivery guarantees). Two runners call it:

- `RqRunner` (REDIS_URL set): committed job ids are enqueued on an RQ queue whose name carries
  the deployment's Redis prefix; `make worker` processes (`worker.py`, any number, on any
  machine) run them with resources built from their own settings, and one of them at a time
  sweeps the outbox.
- `InProcessRunner` (the embedded default): a thread of the app runs them one by one with the
  app's resources, and
  sweeps the outbox at startup and periodically, so `make run` stays one command. It is a
  thread of its own, never the shared thread pool that serves requests.

A job that fails is retried after a growing delay, up to JOB_MAX_ATTEMPTS runs, then given up
(logged and counted). Job functions raise to be retried and must be idempotent.
"""

import logging
import queue
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import redis
from redis.exceptions import RedisError
from rq import Queue
from sqlalchemy.orm import Session

import background_tasks
import db_config
import metrics
import outbox
from config import Settings
from db_models import utcnow
from redis_config import key_prefix, redis_timeout_seconds
from resources import JobSubmitter, Resources

logger = logging.getLogger(__name__)

# How many due jobs one sweep dispatches; the next sweep takes the rest.
SWEEP_BATCH = 500
# RQ keeps a failed run's record (a run killed with its worker) this long; the outbox decides.
_RQ_FAILURE_TTL_SECONDS = 24 * 3600
_RQ_JOB_ID = re.compile(r"^outbox-([0-9]+)-[0-9a-f]+$")
# How long stopping the in-process runner waits for the job in hand.
_STOP_WAIT_SECONDS = 30


# --- what each job does -------------------------------------------------------------------


def notify_task_completed(resources: Resources, task_id: int) -> None:
    """Send the completion notice of one task; raises (to be retried) when it cannot be sent."""
    try:
        background_tasks.send_completion_notices(resources, [task_id])
    except Exception:
        logger.exception(
            "Could not send the completion notice for task %s",
            task_id,
            extra={"event": "notification_failed", "task_id": task_id},
        )
        raise


def remove_stored_files(resources: Resources, stored_filenames: list[str]) -> None:
    """Remove the bytes of deleted files (removing what is already gone is no error)."""
    background_tasks.remove_stored_files(resources.storage, stored_filenames)


HANDLERS: dict[str, Callable[[Resources, dict[str, Any]], None]] = {
    outbox.TASK_COMPLETED: lambda resources, payload: notify_task_completed(
        resources, int(payload["task_id"])
    ),
    outbox.REMOVE_STORED_FILES: lambda resources, payload: remove_stored_files(
        resources, [str(name) for name in payload["stored_filenames"]]
    ),
}


# --- running one job ----------------------------------------------------------------------


def run_job(resources: Resources, job_id: int) -> None:
    """Run one outbox job unless it is done or another run holds it."""
    settings = resources.settings
    with db_config.transaction(resources.sessions) as session:
        job = outbox.claim(
            session,
            job_id,
            now=utcnow(),
            lease=timedelta(seconds=settings.job_timeout_seconds),
            max_attempts=settings.job_max_attempts,
        )
    if job is None:
        logger.debug("Job %s is done or running elsewhere; nothing to do", job_id)
        return
    try:
        handler = HANDLERS.get(job.kind)
        if handler is None:
            raise LookupError(f"no handler for jobs of kind {job.kind!r}")
        handler(resources, job.payload)
    except Exception as exc:
        _record_failure(resources, job, exc)
        return
    with db_config.transaction(resources.sessions) as session:
        outbox.finish(session, job.id, now=utcnow())


def _record_failure(resources: Resources, job: outbox.Claim, exc: Exception) -> None:
    settings = resources.settings
    resources.events.count("job_failures", kind=job.kind)
    with db_config.transaction(resources.sessions) as session:
        given_up = outbox.fail(
            session,
            job,
            now=utcnow(),
            error=f"{type(exc).__name__}: {exc}",
            max_attempts=settings.job_max_attempts,
        )
    extra = {"event": "job_failed", "job_id": job.id, "job_kind": job.kind}
    if given_up:
        _given_up(resources.events, job.id, job.kind, f"after {job.attempts} attempts")
        return
    # The exception's type only: its text may carry an address.
    logger.warning(
        "Job %s (%s) failed on attempt %d of %d (%s); retried in %ds",
        job.id,
        job.kind,
        job.attempts,
        settings.job_max_attempts,
        type(exc).__name__,
        outbox.retry_delay(job.attempts).total_seconds(),
        extra=extra,
    )


def _given_up(events: metrics.EventCounters, job_id: int, kind: str, why: str) -> None:
    events.count("jobs_abandoned", kind=kind)
    if kind == outbox.TASK_COMPLETED:
        events.count("notices_dropped", reason="failed")
    logger.error(
        "Job %s (%s) given up %s",
        job_id,
        kind,
        why,
        extra={"event": "job_abandoned", "job_id": job_id, "job_kind": kind},
    )


# --- runners ------------------------------------------------------------------------------


class Runner(Protocol):
    """Carries out committed jobs: `submit` must be quick and must never raise."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def submit(self, job_ids: Sequence[int]) -> None:
        """Run these jobs soon (ids just committed)."""

    def resubmit(self, job_ids: Sequence[int]) -> None:
        """Run these jobs soon unless they are already waiting (ids from a sweep)."""

    def queued(self) -> int | None:
        """How many jobs wait to run, when known."""


def queue_name(settings: Settings) -> str:
    """The RQ queue of this deployment: its name carries the deployment's Redis prefix."""
    return f"{key_prefix(settings)}jobs"


def _rq_job_id(job_id: int) -> str:
    # A fresh RQ id per dispatch: RQ's bookkeeping of an earlier run (killed with its worker)
    # never touches a later one. The outbox id inside lets a sweep see what is queued.
    return f"outbox-{job_id}-{uuid.uuid4().hex[:12]}"


# The resources of a worker process: RQ calls `run_queued_job` with the job id only.
_worker_resources: Resources | None = None


def serve_jobs_with(resources: Resources | None) -> Resources | None:
    """The resources this process's RQ jobs run with (`worker.py`); returns the previous ones."""
    global _worker_resources
    previous, _worker_resources = _worker_resources, resources
    return previous


def run_queued_job(job_id: int) -> None:
    """The RQ job function: `run_job` with the resources the worker process was started with."""
    if _worker_resources is None:
        raise RuntimeError("this process serves no jobs: see worker.py")
    run_job(_worker_resources, job_id)


class RqRunner:
    """Production: enqueue on RQ; `make worker` processes run the jobs."""

    def __init__(
        self, settings: Settings, *, connection: redis.Redis | None = None, is_async: bool = True
    ) -> None:
        if connection is None:
            if not settings.redis_url:
                raise ValueError("the RQ runner needs REDIS_URL")
            timeout = redis_timeout_seconds(settings)
            # Enqueueing happens before the response: bounded like every other Redis call.
            connection = redis.Redis.from_url(
                settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        self.connection = connection
        self.timeout = settings.job_timeout_seconds
        # is_async=False runs each job at once in the enqueuing thread (tests).
        self.queue = Queue(queue_name(settings), connection=connection, is_async=is_async)

    def start(self) -> None:
        """Nothing to start here: workers run the jobs and sweep the outbox."""

    def stop(self) -> None:
        """Nothing to stop."""

    def submit(self, job_ids: Sequence[int]) -> None:
        try:
            for job_id in job_ids:
                self.queue.enqueue_call(
                    run_queued_job,
                    args=(job_id,),
                    job_id=_rq_job_id(job_id),
                    timeout=self.timeout,
                    result_ttl=0,
                    failure_ttl=_RQ_FAILURE_TTL_SECONDS,
                    description=f"outbox job {job_id}",
                )
        except (RedisError, OSError) as error:
            # The jobs are committed in the outbox: the next sweep enqueues them.
            logger.warning(
                "Could not enqueue %d job(s), the outbox sweep will: %s",
                len(job_ids),
                type(error).__name__,
            )

    def resubmit(self, job_ids: Sequence[int]) -> None:
        if not job_ids:
            return
        queued = {
            int(match.group(1))
            for rq_id in self.queue.get_job_ids()
            if (match := _RQ_JOB_ID.fullmatch(rq_id))
        }
        missing = [job_id for job_id in job_ids if job_id not in queued]
        if missing:
            logger.info(
                "Outbox sweep: enqueueing %d job(s) the queue did not hold",
                len(missing),
                extra={"event": "outbox_sweep", "job_ids": missing[:100]},
            )
            self.submit(missing)

    def queued(self) -> int | None:
        try:
            return int(self.queue.count)
        except (RedisError, OSError):
            return None


class InProcessRunner:
    """The embedded default: one thread of this process runs the jobs and sweeps the outbox."""

    def __init__(self, resources: Resources, *, sweep_seconds: float | None) -> None:
        self.resources = resources
        self.settings = resources.settings
        self.sweep_seconds = sweep_seconds
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        # Job id -> how many times it waits in the queue (a duplicate run finds it done).
        self._waiting: Counter[int] = Counter()
        self._idle = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the job in hand and stop; jobs still waiting run after the next start."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        self._queue.put(None)
        # Bounded: a run cut short at exit is run again once its lease expires.
        thread.join(timeout=min(self.settings.job_timeout_seconds, _STOP_WAIT_SECONDS))
        with self._idle:
            # What still waits is committed in the outbox: the next start's sweep finds it.
            self._queue = queue.SimpleQueue()
            self._waiting.clear()
            self._idle.notify_all()

    def submit(self, job_ids: Sequence[int]) -> None:
        with self._idle:
            for job_id in job_ids:
                self._waiting[job_id] += 1
                self._queue.put(job_id)

    def resubmit(self, job_ids: Sequence[int]) -> None:
        with self._idle:
            missing = [job_id for job_id in job_ids if not self._waiting[job_id]]
        self.submit(missing)

    def queued(self) -> int | None:
        with self._idle:
            return self._waiting.total()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every submitted job has run; False when `timeout` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._waiting, timeout=timeout)

    def _loop(self) -> None:
        next_sweep = time.monotonic()
        while not self._stopping.is_set():
            if self.sweep_seconds is not None and time.monotonic() >= next_sweep:
                _sweep_quietly(self.resources, self)
                next_sweep = time.monotonic() + self.sweep_seconds
            wait = None if self.sweep_seconds is None else max(next_sweep - time.monotonic(), 0)
            try:
                job_id = self._queue.get(timeout=wait)
            except queue.Empty:
                continue
            if job_id is None or self._stopping.is_set():
                break
            try:
                run_job(self.resources, job_id)
            except Exception:
                logger.exception("Job %s could not be run; the outbox sweep retries it", job_id)
            finally:
                with self._idle:
                    self._waiting[job_id] -= 1
                    if self._waiting[job_id] <= 0:
                        del self._waiting[job_id]
                    self._idle.notify_all()


def build_runner(resources: Resources) -> Runner:
    """RQ when REDIS_URL is set, else the runner thread of this process."""
    settings = resources.settings
    if settings.redis_url:
        return RqRunner(settings)
    return InProcessRunner(resources, sweep_seconds=settings.outbox_sweep_seconds)


# --- the sweep ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepReport:
    dispatched: list[int]
    given_up: list[int]
    purged: int


def sweep(resources: Resources, runner: Runner) -> SweepReport:
    """Dispatch again what is due and not done; give up what ran out of attempts; purge."""
    settings = resources.settings
    now = utcnow()
    with db_config.transaction(resources.sessions) as session:
        exhausted = outbox.give_up_exhausted(
            session, now=now, max_attempts=settings.job_max_attempts
        )
        due = outbox.due(
            session, now=now, max_attempts=settings.job_max_attempts, limit=SWEEP_BATCH
        )
        purged = outbox.purge_done(session, before=now - outbox.DONE_RETENTION)
    for job_id, kind in exhausted:
        _given_up(resources.events, job_id, kind, "after its last run did not finish")
    runner.resubmit(due)
    return SweepReport(dispatched=due, given_up=[job_id for job_id, _ in exhausted], purged=purged)


def _sweep_quietly(resources: Resources, runner: Runner) -> None:
    try:
        sweep(resources, runner)
    except Exception:
        logger.warning("Outbox sweep failed; trying again later", exc_info=True)


def sweep_lock_key(settings: Settings) -> str:
    return f"{key_prefix(settings)}outbox-sweep"


class Sweeper:
    """The worker's periodic sweep: at most one per OUTBOX_SWEEP_SECONDS across all workers.

    Whoever sets the Redis lock key (NX, expiring after one interval) sweeps; the others skip
    that round. A Redis flush loses the key too, and the next round sweeps at once.
    """

    def __init__(self, resources: Resources, runner: RqRunner) -> None:
        self.resources = resources
        self.settings = resources.settings
        self.runner = runner
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="outbox-sweep", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.job_timeout_seconds)

    def sweep_if_first(self) -> bool:
        """Sweep unless another process swept within the interval; True when this one did."""
        interval_ms = max(int(self.settings.outbox_sweep_seconds * 1000), 1)
        try:
            first = self.runner.connection.set(
                sweep_lock_key(self.settings), uuid.uuid4().hex, nx=True, px=interval_ms
            )
        except (RedisError, OSError) as error:
            logger.warning("Outbox sweep skipped: Redis unavailable (%s)", type(error).__name__)
            return False
        if not first:
            return False
        _sweep_quietly(self.resources, self.runner)
        return True

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self.sweep_if_first()
            self._stopping.wait(self.settings.outbox_sweep_seconds)


def queue_state(session: Session, runner: JobSubmitter | None) -> metrics.JobQueueState:
    """Jobs recorded and not done, by kind (the database), and jobs waiting in the queue."""
    return metrics.JobQueueState(
        pending=outbox.pending_counts(session),
        queued=runner.queued() if runner is not None else None,
    )
