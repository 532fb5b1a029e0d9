"""The cache: the in-process one, and Redis failures that must never break a request.

The Redis tests start their own `redis-server` on a free port and stop or freeze it: the shared
server is never touched. They need only the binary, so they run in both passes.
"""

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from config import Settings, get_settings
from dependencies import get_request_cache
from redis_config import MemoryCache, RedisCache, build_cache
from tests.conftest import AuthUser
from tests.process_helpers import RedisServer, needs_redis_server
from tests.served_app import free_port
from tests.task_helpers import create_task

# The production default, whatever the test configuration says.
TIMEOUT_SECONDS = Settings.model_fields["redis_socket_timeout_ms"].default / 1000
RETRY_INTERVAL = 0.2
KEY_PREFIX = "tm-test"


# --- the in-process cache -----------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_cache_stores_until_the_ttl_runs_out() -> None:
    clock = FakeClock()
    cache = MemoryCache(clock=clock)
    cache.set("k", "v", ttl_seconds=10)
    assert cache.get("k") == "v"
    clock.now += 9.9
    assert cache.get("k") == "v"
    clock.now += 0.1
    assert cache.get("k") is None
    assert cache.get("never") is None


def test_memory_cache_counters_start_at_zero_and_count() -> None:
    cache = MemoryCache()
    assert cache.counter("c") == 0
    cache.incr("c", ttl_seconds=60)
    cache.incr("c", ttl_seconds=60)
    assert cache.counter("c") == 2
    assert cache.ping()


def test_memory_cache_is_bounded_and_forgets_everything_rather_than_a_counter() -> None:
    cache = MemoryCache(max_entries=3)
    cache.incr("version", ttl_seconds=60)
    cache.set("a", "1", ttl_seconds=60)
    cache.set("b", "2", ttl_seconds=60)
    cache.set("c", "3", ttl_seconds=60)
    assert cache.get("c") == "3"
    assert (cache.get("a"), cache.get("b"), cache.counter("version")) == (None, None, 0)


def test_without_redis_url_the_cache_is_in_process() -> None:
    settings = get_settings().model_copy(update={"redis_url": None})
    assert isinstance(build_cache(settings), MemoryCache)
    with_redis = get_settings().model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    cache = build_cache(with_redis)
    assert isinstance(cache, RedisCache)
    cache.close()


# --- a Redis server of our own ------------------------------------------------------------


@pytest.fixture
def redis_cache(redis_server: RedisServer) -> Iterator[RedisCache]:
    cache = RedisCache(
        redis_server.url,
        key_prefix=KEY_PREFIX,
        timeout_seconds=TIMEOUT_SECONDS,
        retry_interval_seconds=RETRY_INTERVAL,
    )
    try:
        yield cache
    finally:
        cache.close()


@pytest.fixture
def app_on_redis(app: FastAPI, client: TestClient, redis_cache: RedisCache) -> RedisCache:
    """Make the app (reads and write invalidations alike) use the test's own Redis."""
    app.dependency_overrides[get_request_cache] = lambda: redis_cache
    return redis_cache


def wait_out_the_retry_interval() -> None:
    time.sleep(RETRY_INTERVAL * 1.5)


def timed_get(client: TestClient, user: AuthUser, path: str) -> tuple[int, str | None, float]:
    started = time.monotonic()
    response = client.get(path, headers=user.headers)
    return response.status_code, response.headers.get("X-Cache"), time.monotonic() - started


def redis_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "redis_config" and record.levelno == logging.WARNING
    ]


# --- the Redis cache on its own -----------------------------------------------------------


@needs_redis_server
def test_redis_cache_round_trip(redis_cache: RedisCache) -> None:
    assert redis_cache.ping()
    redis_cache.set("k", "v", ttl_seconds=60)
    assert redis_cache.get("k") == "v"
    assert redis_cache.counter("c") == 0
    redis_cache.incr("c", ttl_seconds=60)
    assert redis_cache.counter("c") == 1
    assert redis_cache.get_many(["k", "c", "absent"]) == ["v", "1", None]


@needs_redis_server
def test_an_async_read_sees_what_a_sync_read_sees_on_every_event_loop(
    redis_cache: RedisCache,
) -> None:
    redis_cache.set("k", "v", ttl_seconds=60)
    # Each asyncio.run is a new event loop: the async client follows the loop it runs on.
    for _ in range(3):
        assert asyncio.run(redis_cache.get_many_async(["k", "absent"])) == ["v", None]
    memory = MemoryCache()
    memory.set("k", "v", ttl_seconds=60)
    assert asyncio.run(memory.get_many_async(["k", "absent"])) == ["v", None]


@needs_redis_server
def test_an_async_write_is_read_back_by_the_sync_client_with_its_ttl(
    redis_server: RedisServer, redis_cache: RedisCache
) -> None:
    for loop in range(2):  # a new event loop each time, as for reads
        asyncio.run(redis_cache.set_async("k", f"v{loop}", ttl_seconds=60))
        assert redis_cache.get("k") == f"v{loop}"
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as raw:
        assert 0 < raw.ttl(f"{KEY_PREFIX}:k") <= 60
    memory = MemoryCache()
    asyncio.run(memory.set_async("k", "v", ttl_seconds=60))
    assert memory.get("k") == "v"


@needs_redis_server
def test_every_key_carries_the_prefix_and_other_prefixes_see_nothing(
    redis_server: RedisServer, redis_cache: RedisCache
) -> None:
    redis_cache.set("stats:1:3:0:2026-01-01", "mine", ttl_seconds=60)
    redis_cache.incr("stats:version:3", ttl_seconds=60)
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as raw:
        assert sorted(raw.keys("*")) == [
            f"{KEY_PREFIX}:stats:1:3:0:2026-01-01",
            f"{KEY_PREFIX}:stats:version:3",
        ]
    other = RedisCache(redis_server.url, key_prefix="tm-other", timeout_seconds=TIMEOUT_SECONDS)
    try:
        assert other.get("stats:1:3:0:2026-01-01") is None
        assert other.counter("stats:version:3") == 0
    finally:
        other.close()


def test_a_dead_redis_reads_as_misses_at_once_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = RedisCache(
        f"redis://127.0.0.1:{free_port()}/0",
        key_prefix=KEY_PREFIX,
        timeout_seconds=TIMEOUT_SECONDS,
        retry_interval_seconds=RETRY_INTERVAL,
    )
    started = time.monotonic()
    for _ in range(20):
        assert cache.get("k") is None
        assert cache.counter("c") is None
        cache.set("k", "v", ttl_seconds=60)
        cache.incr("c", ttl_seconds=60)
        assert not cache.ping()
        assert asyncio.run(cache.get_many_async(["k"])) is None
        asyncio.run(cache.set_async("k", "v", ttl_seconds=60))
        asyncio.run(cache.incr_async("c", ttl_seconds=60))
    assert time.monotonic() - started < 1
    assert len(redis_warnings(caplog)) == 1
    cache.close()


@needs_redis_server
def test_increments_lost_while_frozen_land_when_redis_answers_again(
    redis_server: RedisServer, redis_cache: RedisCache
) -> None:
    redis_cache.incr("c", ttl_seconds=60)
    redis_server.freeze()
    started = time.monotonic()
    redis_cache.incr("c", ttl_seconds=60)
    assert redis_cache.counter("c") is None
    assert time.monotonic() - started < 0.5
    redis_server.thaw()
    wait_out_the_retry_interval()
    # At least once: the frozen server may still run the timed-out INCR when it wakes up, and
    # for an invalidation counter one bump too many only costs a cache miss.
    # Read on the event loop, as the statistics route reads: the increments land first.
    values = asyncio.run(redis_cache.get_many_async(["c"]))
    assert values is not None
    assert int(values[0] or 0) >= 2


@needs_redis_server
def test_an_increment_on_the_event_loop_counts_with_its_ttl_and_lands_after_an_outage(
    redis_server: RedisServer, redis_cache: RedisCache
) -> None:
    """`incr_async`, what a create in one statement bumps the owner's version with: counted
    on every event loop, and kept while Redis is frozen until it answers again."""
    for _ in range(2):  # a new event loop each time
        asyncio.run(redis_cache.incr_async("c", ttl_seconds=60))
    assert redis_cache.counter("c") == 2
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as raw:
        assert 0 < raw.ttl(f"{KEY_PREFIX}:c") <= 60
    redis_server.freeze()
    started = time.monotonic()
    asyncio.run(redis_cache.incr_async("c", ttl_seconds=60))
    asyncio.run(redis_cache.incr_async("c", ttl_seconds=60))  # the breaker is open: kept too
    assert time.monotonic() - started < 0.5
    redis_server.thaw()
    wait_out_the_retry_interval()
    values = asyncio.run(redis_cache.get_many_async(["c"]))
    assert values is not None
    assert int(values[0] or 0) >= 3  # at least once, as `incr`
    memory = MemoryCache()
    asyncio.run(memory.incr_async("c", ttl_seconds=60))
    assert memory.counter("c") == 1


# --- the app while its Redis fails --------------------------------------------------------


@needs_redis_server
def test_a_stopped_redis_never_breaks_list_or_stats_and_is_used_again_on_return(
    client: TestClient,
    alice: AuthUser,
    redis_server: RedisServer,
    app_on_redis: RedisCache,
    caplog: pytest.LogCaptureFixture,
) -> None:
    create_task(client, alice)
    assert timed_get(client, alice, "/tasks/stats")[1] == "MISS"
    assert timed_get(client, alice, "/tasks/stats")[1] == "HIT"

    redis_server.stop()
    for _ in range(5):
        status, cache, seconds = timed_get(client, alice, "/tasks/stats")
        assert (status, cache) == (200, "MISS")
        assert seconds < 1
        status, _, seconds = timed_get(client, alice, "/tasks")
        assert status == 200
        assert seconds < 1
    assert len(redis_warnings(caplog)) == 1

    redis_server.start()
    wait_out_the_retry_interval()
    assert timed_get(client, alice, "/tasks/stats")[1] == "MISS"
    assert timed_get(client, alice, "/tasks/stats")[1] == "HIT"
    assert any("reachable again" in record.getMessage() for record in caplog.records)


@needs_redis_server
def test_a_frozen_redis_costs_a_request_at_most_its_timeout(
    client: TestClient, alice: AuthUser, redis_server: RedisServer, app_on_redis: RedisCache
) -> None:
    create_task(client, alice)
    assert timed_get(client, alice, "/tasks/stats")[1] == "MISS"

    redis_server.freeze()
    for _ in range(5):
        status, cache, seconds = timed_get(client, alice, "/tasks/stats")
        assert (status, cache) == (200, "MISS")
        assert seconds < 1
        status, _, seconds = timed_get(client, alice, "/tasks")
        assert status == 200
        assert seconds < 1

    redis_server.thaw()
    wait_out_the_retry_interval()
    assert timed_get(client, alice, "/tasks/stats")[1] == "HIT"


@needs_redis_server
def test_a_write_made_while_redis_was_frozen_is_not_hidden_by_an_old_entry(
    client: TestClient, alice: AuthUser, redis_server: RedisServer, app_on_redis: RedisCache
) -> None:
    create_task(client, alice)
    client.get("/tasks/stats", headers=alice.headers)
    assert client.get("/tasks/stats", headers=alice.headers).json()["total"] == 1

    redis_server.freeze()
    create_task(client, alice)
    redis_server.thaw()
    wait_out_the_retry_interval()

    response = client.get("/tasks/stats", headers=alice.headers)
    assert (response.json()["total"], response.headers["X-Cache"]) == (2, "MISS")
