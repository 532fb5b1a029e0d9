"""The job runner of the test suite: each job runs before the call that committed it returns."""

from collections.abc import Sequence

from jobs import InProcessRunner, RqRunner
from resources import Resources

WAIT_SECONDS = 60


class RunAtOnce:
    """Wraps the runner the settings choose; its jobs have run when `submit` returns.

    The app's lifespan starts and stops the process's runner; many tests enter and leave a
    lifespan, so here only the session fixture does (`start_for_tests`, `stop_for_tests`).
    """

    def __init__(self, inner: InProcessRunner | RqRunner) -> None:
        self.inner = inner

    @classmethod
    def for_resources(cls, resources: Resources) -> "RunAtOnce":
        if resources.settings.redis_url:
            return cls(RqRunner(resources.settings, is_async=False))
        return cls(InProcessRunner(resources, sweep_seconds=None))

    def start_for_tests(self) -> None:
        self.inner.start()

    def stop_for_tests(self) -> None:
        self.inner.stop()

    def start(self) -> None:
        """The lifespan's start: the session fixture started the runner already."""

    def stop(self) -> None:
        """The lifespan's stop: the session fixture stops the runner."""

    def submit(self, job_ids: Sequence[int]) -> None:
        self.inner.submit(job_ids)
        self.wait()

    def resubmit(self, job_ids: Sequence[int]) -> None:
        self.inner.resubmit(job_ids)
        self.wait()

    def queued(self) -> int | None:
        return self.inner.queued()

    def wait(self) -> None:
        if isinstance(self.inner, InProcessRunner):
            assert self.inner.wait_idle(WAIT_SECONDS), "jobs still running after a minute"


class HeldJobs:
    """A runner that only collects the ids it is given: the jobs wait until a test runs them."""

    def __init__(self) -> None:
        self.job_ids: list[int] = []

    def start(self) -> None:
        """Nothing runs here."""

    def stop(self) -> None:
        """Nothing runs here."""

    def submit(self, job_ids: Sequence[int]) -> None:
        self.job_ids.extend(job_ids)

    def resubmit(self, job_ids: Sequence[int]) -> None:
        self.job_ids.extend(job_id for job_id in job_ids if job_id not in self.job_ids)

    def queued(self) -> int | None:
        return len(self.job_ids)

    def take(self) -> list[int]:
        """The ids collected so far, forgotten here."""
        taken, self.job_ids = self.job_ids, []
        return taken
