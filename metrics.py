"""Prometheus metrics: requests by route template and status, latency, jobs and notices.

Request metrics are counted in each API process by `MetricsMiddleware` (plain ASGI, a few
microseconds a request). Under `make serve` (several worker processes) prometheus-client's
multiprocess mode merges them: scripts/serve.sh sets PROMETHEUS_MULTIPROC_DIR, which the
library itself reads when it is imported.

Job and notice counters are events of the whole deployment: jobs run on `make worker` processes,
possibly on other machines. They are therefore counted in Redis when REDIS_URL is set (in this
process otherwise), and every API process reports the same totals. The queue depth is read at
scrape time: jobs recorded in the outbox and not done, and jobs waiting in the queue.
"""

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from starlette.types import Message, Receive, Scope, Send

from config import Settings
from middleware import HttpMiddleware
from redis_config import key_prefix, redis_timeout_seconds

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NAMESPACE = "taskmanager"
UNMATCHED_ROUTE = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUESTS = Counter(
    "http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
    namespace=NAMESPACE,
)
LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by method and route template.",
    ["method", "route"],
    namespace=NAMESPACE,
)

# Deployment-wide counters: name -> (help, label names).
EVENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "job_failures": ("Job runs that failed (each is retried until JOB_MAX_ATTEMPTS).", ("kind",)),
    "jobs_abandoned": ("Jobs given up after their last attempt.", ("kind",)),
    "notices_sent": ("Completion notices delivered to the mail server (or the log).", ()),
    "notices_dropped": ("Completion notices not delivered, by reason.", ("reason",)),
}


# --- requests -----------------------------------------------------------------------------


class MetricsMiddleware(HttpMiddleware):
    """Count each HTTP request and time it, labelled by its route template (never the path)."""

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router stores the matched route in the scope: its template keeps the
            # label set small (no ids), and unknown paths share one label.
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            REQUESTS.labels(method, route, str(status)).inc()
            LATENCY.labels(method, route).observe(time.perf_counter() - started)


# --- deployment-wide event counters -------------------------------------------------------


def event_key(name: str, labels: dict[str, str]) -> str:
    """How one counter (an event and its labels) is keyed in the store: `name|label=value`."""
    return name + "".join(f"|{key}={labels[key]}" for key in sorted(labels))


def _parse_field(raw: str) -> tuple[str, dict[str, str]]:
    name, *pairs = raw.split("|")
    return name, dict(pair.split("=", 1) for pair in pairs if "=" in pair)


class EventCounters(ABC):
    """Counters shared by every process of the deployment; never raise."""

    @abstractmethod
    def add(self, name: str, labels: dict[str, str], amount: int) -> None: ...

    @abstractmethod
    def snapshot(self) -> dict[str, int]:
        """Every counter, keyed `name|label=value...`."""

    def count(self, event: str, amount: int = 1, **labels: str) -> None:
        """Add to a deployment-wide counter (one of EVENTS); never raises."""
        if amount:
            self.add(event, labels, amount)

    @abstractmethod
    def close(self) -> None:
        """Release connections, if any."""


class MemoryEventCounters(EventCounters):
    """The embedded default: the jobs run in this process, so its own counts are the totals."""

    def __init__(self) -> None:
        self._counts: Tally[str] = Tally()
        self._lock = threading.Lock()

    def add(self, name: str, labels: dict[str, str], amount: int) -> None:
        with self._lock:
            self._counts[event_key(name, labels)] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def close(self) -> None:
        """Nothing to release."""


class RedisEventCounters(EventCounters):
    """One Redis hash for the deployment, incremented by whichever process saw the event."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        timeout = redis_timeout_seconds(settings)
        self._client = redis.Redis.from_url(
            redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
        )
        self.key = f"{key_prefix(settings)}metrics"

    def add(self, name: str, labels: dict[str, str], amount: int) -> None:
        try:
            self._client.hincrby(self.key, event_key(name, labels), amount)
        except (RedisError, OSError) as error:
            logger.debug("Metric %s not counted: %s", name, error)

    def snapshot(self) -> dict[str, int]:
        try:
            raw: dict[str, str] = self._client.hgetall(self.key)  # type: ignore[assignment]
        except (RedisError, OSError) as error:
            logger.warning("Job counters unavailable: Redis: %s", type(error).__name__)
            return {}
        return {key: int(value) for key, value in raw.items() if value.lstrip("-").isdigit()}

    def close(self) -> None:
        self._client.close()


def build_event_counters(settings: Settings) -> EventCounters:
    """The deployment's counters: in Redis when REDIS_URL is set, else in this process."""
    if settings.redis_url:
        return RedisEventCounters(settings, settings.redis_url)
    return MemoryEventCounters()


# --- the scrape ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JobQueueState:
    """The job queue at scrape time."""

    pending: dict[str, int] = field(default_factory=dict)
    queued: int | None = None


class _DeploymentCollector(Collector):
    def __init__(self, state: JobQueueState, events: dict[str, int]) -> None:
        self.state = state
        self.events = events

    def collect(self) -> Iterable[Metric]:
        pending = GaugeMetricFamily(
            f"{NAMESPACE}_jobs_pending",
            "Jobs recorded in the outbox and not done yet (the durable queue depth), by kind.",
            labels=["kind"],
        )
        for kind, number in sorted(self.state.pending.items()):
            pending.add_metric([kind], number)
        yield pending
        if self.state.queued is not None:
            yield GaugeMetricFamily(
                f"{NAMESPACE}_job_queue_length",
                "Jobs waiting in the job queue for a worker.",
                value=self.state.queued,
            )
        yield from self._events()

    def _events(self) -> Iterator[Metric]:
        parsed = [(*_parse_field(raw), value) for raw, value in self.events.items()]
        for name, (documentation, label_names) in EVENTS.items():
            family = CounterMetricFamily(
                f"{NAMESPACE}_{name}", documentation, labels=list(label_names)
            )
            for event, labels, value in parsed:
                if event == name:
                    family.add_metric([labels.get(label, "") for label in label_names], value)
            if not label_names and not any(event == name for event, _, _ in parsed):
                family.add_metric([], 0)
            yield family


def multiprocess_mode() -> bool:
    """Whether prometheus-client keeps its values in files shared by the worker processes."""
    # Decided by the library when it is imported, from PROMETHEUS_MULTIPROC_DIR.
    return prometheus_values.ValueClass is not prometheus_values.MutexValue


def render(state: JobQueueState, events: EventCounters) -> bytes:
    """The Prometheus text exposition of this deployment's metrics."""
    if multiprocess_mode():
        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        requests = generate_latest(merged)
    else:
        requests = generate_latest(REGISTRY)
    deployment = CollectorRegistry(auto_describe=False)
    deployment.register(_DeploymentCollector(state, events.snapshot()))
    return requests + generate_latest(deployment)
