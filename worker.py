"""`python -m worker` (`make worker`): run the deployment's jobs from its RQ queue.

Start any number, on any machine that reaches the database, Redis and the mail server; each
takes one job at a time. Each also runs the outbox sweep, which one process at a time carries
out per OUTBOX_SWEEP_SECONDS (a Redis lock decides): it enqueues again what a crash or a Redis
flush lost, and jobs due for a retry. Stop it with SIGTERM or Ctrl-C: the job in hand finishes.

The worker runs jobs in its own process (RQ's SimpleWorker, no fork per job): the jobs are short
calls with their own timeouts, and they share the process's pooled database connections.
"""

import argparse
import logging
import sys
from collections.abc import Sequence

import redis
from rq import SimpleWorker

import jobs
from config import get_settings
from logging_config import configure_logging
from resources import Resources

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Run jobs until stopped; 2 when the settings cannot run a worker."""
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument(
        "--burst", action="store_true", help="run the queued jobs, then exit (no sweep)"
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings)
    if not settings.redis_url:
        sys.stderr.write(
            "REDIS_URL is not set: there is no queue to work on. Without Redis, `make run` "
            "(and each `make serve` process) runs its jobs itself.\n"
        )
        return 2
    # No socket timeout of our own: RQ sizes it to its blocking wait for the next job.
    connection = redis.Redis.from_url(settings.redis_url, health_check_interval=30)
    # What the jobs use (engine, storage, counters), built once from this worker's settings.
    resources = Resources(settings)
    resources.runner = runner = jobs.RqRunner(settings, connection=connection)
    jobs.serve_jobs_with(resources)
    sweeper = jobs.Sweeper(resources, runner)
    if not args.burst:
        sweeper.start()
    logger.info(
        "Worker started on queue %s (job timeout %ds, sweep every %ss)",
        runner.queue.name,
        settings.job_timeout_seconds,
        settings.outbox_sweep_seconds,
    )
    worker = SimpleWorker([runner.queue], connection=connection)
    try:
        worker.work(burst=args.burst, logging_level=settings.log_level)
    finally:
        sweeper.stop()
        jobs.serve_jobs_with(None)
        resources.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
